//! Reads template.yaml (AWS SAM / CloudFormation), the single source of truth for what is
//! deployed, and extracts typed specs of the resources that local AWS needs:
//! `AWS::DynamoDB::Table` ([`TableSpec`]) and `AWS::SQS::Queue` ([`QueueSpec`]). Other
//! resource types (alarms, functions, ...) are skipped.
//!
//! Intrinsic functions are accepted in both forms: the short YAML tags (`!Sub`, `!Ref`,
//! `!GetAtt`, `!Join`), which serde_yaml 0.9 hands over as [`Value::Tagged`], and the long
//! forms (`Fn::Sub`, `Ref`, `Fn::GetAtt`, `Fn::Join`). Pseudo parameters
//! (`AWS::StackName`, `AWS::Region`, `AWS::AccountId`, `AWS::Partition`, `AWS::URLSuffix`)
//! come from a [`ResolveContext`]; template parameters resolve to the context's overrides or
//! their `Default`.

use std::collections::BTreeMap;

mod functions;
pub use functions::*;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail, ensure};
use serde_yaml::{Mapping, Value};

/// CloudFormation type of the DynamoDB tables extracted by [`Template::tables`].
pub const DYNAMODB_TABLE: &str = "AWS::DynamoDB::Table";
/// CloudFormation type of the SQS queues extracted by [`Template::queues`].
pub const SQS_QUEUE: &str = "AWS::SQS::Queue";

/// template.yaml: `TEMPLATE_PATH` if set, otherwise the one at the workspace root.
pub fn template_path() -> PathBuf {
    match std::env::var_os("TEMPLATE_PATH") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml"),
    }
}

/// A parsed template: its parameters and its resources, intrinsics still unresolved.
#[derive(Debug, Clone)]
pub struct Template {
    parameters: BTreeMap<String, Option<Value>>,
    resources: BTreeMap<String, RawResource>,
    /// `Globals: Function:` of a SAM template (defaults for every function).
    globals_function: Mapping,
}

/// One entry of `Resources`, as written.
#[derive(Debug, Clone)]
pub struct RawResource {
    pub resource_type: String,
    pub properties: Mapping,
    /// `Metadata` (SAM build settings live here).
    pub metadata: Option<Value>,
}

/// Values of the pseudo parameters, plus overrides of template parameters.
#[derive(Debug, Clone)]
pub struct ResolveContext {
    pub stack_name: String,
    pub region: String,
    pub account_id: String,
    /// Values for template `Parameters`; a parameter missing here takes its `Default`.
    pub parameters: BTreeMap<String, String>,
    /// What `!Ref` / `!GetAtt` of resources resolve to once they exist (after
    /// provisioning); without an entry such a reference is an error.
    pub deployed: BTreeMap<String, DeployedResource>,
}

/// The physical values of one provisioned resource.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeployedResource {
    /// What `!Ref` returns (table name, queue URL, ...).
    pub reference: String,
    /// `!GetAtt` attributes (`Arn`, `QueueName`, ...).
    pub attributes: BTreeMap<String, String>,
}

impl ResolveContext {
    pub fn new(
        stack_name: impl Into<String>,
        region: impl Into<String>,
        account_id: impl Into<String>,
    ) -> Self {
        Self {
            stack_name: stack_name.into(),
            region: region.into(),
            account_id: account_id.into(),
            parameters: BTreeMap::new(),
            deployed: BTreeMap::new(),
        }
    }

    pub fn with_parameter(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.parameters.insert(name.into(), value.into());
        self
    }

    fn partition(&self) -> &'static str {
        if self.region.starts_with("cn-") {
            "aws-cn"
        } else if self.region.starts_with("us-gov-") {
            "aws-us-gov"
        } else {
            "aws"
        }
    }
}

// ------------------------------------------------------------------------------------
// Typed specs
// ------------------------------------------------------------------------------------

/// An `AWS::DynamoDB::Table`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub logical_id: String,
    pub table_name: String,
    pub billing_mode: BillingMode,
    pub attribute_definitions: Vec<AttributeDefinition>,
    pub key_schema: KeySchema,
    pub global_secondary_indexes: Vec<GlobalSecondaryIndex>,
    /// `TimeToLiveSpecification.AttributeName` when `Enabled` is true.
    pub ttl_attribute: Option<String>,
    /// `PointInTimeRecoverySpecification.PointInTimeRecoveryEnabled`.
    pub point_in_time_recovery: bool,
    /// `SSESpecification.SSEEnabled` (KMS-managed encryption; false = AWS-owned key).
    pub sse_enabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BillingMode {
    PayPerRequest,
    Provisioned(Throughput),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throughput {
    pub read_capacity_units: i64,
    pub write_capacity_units: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeDefinition {
    pub name: String,
    pub attribute_type: ScalarType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarType {
    S,
    N,
    B,
}

impl ScalarType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::S => "S",
            Self::N => "N",
            Self::B => "B",
        }
    }
}

/// Partition (HASH) key and optional sort (RANGE) key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema {
    pub hash_key: String,
    pub range_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalSecondaryIndex {
    pub index_name: String,
    pub key_schema: KeySchema,
    pub projection: Projection,
    /// Required by DynamoDB when the table is `PROVISIONED`.
    pub throughput: Option<Throughput>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Projection {
    All,
    KeysOnly,
    Include(Vec<String>),
}

/// An `AWS::SQS::Queue`, resolved. `None` means "not set in the template" (SQS default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    pub logical_id: String,
    pub queue_name: String,
    pub fifo_queue: bool,
    pub content_based_deduplication: Option<bool>,
    pub visibility_timeout: Option<u32>,
    pub message_retention_period: Option<u32>,
    pub delay_seconds: Option<u32>,
    pub maximum_message_size: Option<u32>,
    pub receive_message_wait_time_seconds: Option<u32>,
    pub sqs_managed_sse_enabled: Option<bool>,
    pub redrive_policy: Option<RedrivePolicy>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedrivePolicy {
    pub dead_letter_target: DeadLetterTarget,
    pub max_receive_count: u32,
}

/// Where a queue's dead letters go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterTarget {
    /// `!GetAtt <LogicalId>.Arn` of another queue of the template.
    Queue(String),
    /// A literal ARN (a queue outside the template).
    Arn(String),
}

// ------------------------------------------------------------------------------------
// Template
// ------------------------------------------------------------------------------------

impl Template {
    /// Reads and parses a template file.
    pub fn load(path: impl AsRef<Path>) -> anyhow::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading template {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("parsing template {}", path.display()))
    }

    /// Parses template text (YAML or JSON).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let root: Value = serde_yaml::from_str(text).context("template is not valid YAML")?;
        let root = root
            .as_mapping()
            .ok_or_else(|| anyhow!("template root is not a mapping"))?;

        let mut parameters = BTreeMap::new();
        if let Some(params) = root.get("Parameters") {
            let params = params
                .as_mapping()
                .ok_or_else(|| anyhow!("Parameters is not a mapping"))?;
            for (name, decl) in params {
                let name = key_str(name, "Parameters")?;
                parameters.insert(name.to_owned(), decl.get("Default").cloned());
            }
        }

        let resources_value = root
            .get("Resources")
            .ok_or_else(|| anyhow!("template has no Resources"))?
            .as_mapping()
            .ok_or_else(|| anyhow!("Resources is not a mapping"))?;
        let mut resources = BTreeMap::new();
        for (id, body) in resources_value {
            let id = key_str(id, "Resources")?;
            let resource_type = body
                .get("Type")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("resource {id} has no Type"))?
                .to_owned();
            let properties = match body.get("Properties") {
                None | Some(Value::Null) => Mapping::new(),
                Some(Value::Mapping(m)) => m.clone(),
                Some(_) => bail!("resource {id}: Properties is not a mapping"),
            };
            resources.insert(
                id.to_owned(),
                RawResource {
                    resource_type,
                    properties,
                    metadata: body.get("Metadata").cloned(),
                },
            );
        }
        let globals_function = match root.get("Globals").and_then(|g| g.get("Function")) {
            None | Some(Value::Null) => Mapping::new(),
            Some(Value::Mapping(m)) => m.clone(),
            Some(_) => bail!("Globals.Function is not a mapping"),
        };
        Ok(Self {
            parameters,
            resources,
            globals_function,
        })
    }

    /// All resources by logical id, as written.
    pub fn resources(&self) -> &BTreeMap<String, RawResource> {
        &self.resources
    }

    /// Every `AWS::DynamoDB::Table`, in logical-id order.
    pub fn tables(&self, ctx: &ResolveContext) -> anyhow::Result<Vec<TableSpec>> {
        self.of_type(DYNAMODB_TABLE)
            .map(|(id, props)| {
                self.table(id, props, ctx)
                    .with_context(|| format!("{DYNAMODB_TABLE} {id}"))
            })
            .collect()
    }

    /// Every `AWS::SQS::Queue`, in logical-id order. Redrive targets given as
    /// `!GetAtt X.Arn` are checked to be queues of this template.
    pub fn queues(&self, ctx: &ResolveContext) -> anyhow::Result<Vec<QueueSpec>> {
        let queues = self
            .of_type(SQS_QUEUE)
            .map(|(id, props)| {
                self.queue(id, props, ctx)
                    .with_context(|| format!("{SQS_QUEUE} {id}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        for queue in &queues {
            if let Some(RedrivePolicy {
                dead_letter_target: DeadLetterTarget::Queue(dlq),
                ..
            }) = &queue.redrive_policy
            {
                ensure!(
                    queues.iter().any(|q| &q.logical_id == dlq),
                    "{SQS_QUEUE} {}: dead-letter target {dlq} is not a queue of the template",
                    queue.logical_id
                );
            }
        }
        Ok(queues)
    }

    fn of_type<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = (&'a str, &'a Mapping)> + 'a {
        self.resources
            .iter()
            .filter(move |(_, r)| r.resource_type == ty)
            .map(|(id, r)| (id.as_str(), &r.properties))
    }

    fn table(&self, id: &str, props: &Mapping, ctx: &ResolveContext) -> anyhow::Result<TableSpec> {
        let r = Resolver {
            template: self,
            ctx,
        };
        let table_name = match props.get("TableName") {
            Some(v) => r.string(v).context("TableName")?,
            None => format!("{}-{id}", ctx.stack_name),
        };

        let attribute_definitions = seq(props, "AttributeDefinitions")?
            .iter()
            .map(|def| {
                let name = r.string(field(def, "AttributeName")?)?;
                let attribute_type = match r.string(field(def, "AttributeType")?)?.as_str() {
                    "S" => ScalarType::S,
                    "N" => ScalarType::N,
                    "B" => ScalarType::B,
                    other => bail!("attribute {name}: unknown AttributeType {other}"),
                };
                Ok(AttributeDefinition {
                    name,
                    attribute_type,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()
            .context("AttributeDefinitions")?;

        let key_schema = r
            .key_schema(required(props, "KeySchema")?)
            .context("KeySchema")?;

        let billing_mode = match props.get("BillingMode") {
            Some(v) => r.string(v).context("BillingMode")?,
            None => "PROVISIONED".to_owned(),
        };
        let billing_mode = match billing_mode.as_str() {
            "PAY_PER_REQUEST" => BillingMode::PayPerRequest,
            "PROVISIONED" => BillingMode::Provisioned(
                r.throughput(required(props, "ProvisionedThroughput")?)
                    .context("ProvisionedThroughput")?,
            ),
            other => bail!("unknown BillingMode {other}"),
        };

        let global_secondary_indexes = match props.get("GlobalSecondaryIndexes") {
            None => Vec::new(),
            Some(v) => v
                .as_sequence()
                .ok_or_else(|| anyhow!("GlobalSecondaryIndexes is not a list"))?
                .iter()
                .map(|gsi| {
                    let index_name = r.string(field(gsi, "IndexName")?)?;
                    let key_schema = r
                        .key_schema(field(gsi, "KeySchema")?)
                        .with_context(|| format!("index {index_name}: KeySchema"))?;
                    let projection = r
                        .projection(field(gsi, "Projection")?)
                        .with_context(|| format!("index {index_name}: Projection"))?;
                    let throughput = gsi
                        .get("ProvisionedThroughput")
                        .map(|t| r.throughput(t))
                        .transpose()
                        .with_context(|| format!("index {index_name}: ProvisionedThroughput"))?;
                    Ok(GlobalSecondaryIndex {
                        index_name,
                        key_schema,
                        projection,
                        throughput,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()
                .context("GlobalSecondaryIndexes")?,
        };

        for key in std::iter::once(&key_schema)
            .chain(global_secondary_indexes.iter().map(|g| &g.key_schema))
            .flat_map(|k| std::iter::once(&k.hash_key).chain(k.range_key.as_ref()))
        {
            ensure!(
                attribute_definitions.iter().any(|a| &a.name == key),
                "key attribute {key} is missing from AttributeDefinitions"
            );
        }

        let ttl_attribute = match props.get("TimeToLiveSpecification") {
            None => None,
            Some(spec) => {
                let enabled = match spec.get("Enabled") {
                    Some(v) => r.boolean(v).context("TimeToLiveSpecification.Enabled")?,
                    None => false,
                };
                match (enabled, spec.get("AttributeName")) {
                    (false, _) => None,
                    (true, Some(v)) => Some(
                        r.string(v)
                            .context("TimeToLiveSpecification.AttributeName")?,
                    ),
                    (true, None) => bail!("TimeToLiveSpecification enabled without AttributeName"),
                }
            }
        };
        let point_in_time_recovery = match props
            .get("PointInTimeRecoverySpecification")
            .and_then(|s| s.get("PointInTimeRecoveryEnabled"))
        {
            Some(v) => r.boolean(v).context("PointInTimeRecoveryEnabled")?,
            None => false,
        };
        let sse_enabled = match props
            .get("SSESpecification")
            .and_then(|s| s.get("SSEEnabled"))
        {
            Some(v) => r.boolean(v).context("SSEEnabled")?,
            None => false,
        };

        Ok(TableSpec {
            logical_id: id.to_owned(),
            table_name,
            billing_mode,
            attribute_definitions,
            key_schema,
            global_secondary_indexes,
            ttl_attribute,
            point_in_time_recovery,
            sse_enabled,
        })
    }

    fn queue(&self, id: &str, props: &Mapping, ctx: &ResolveContext) -> anyhow::Result<QueueSpec> {
        let r = Resolver {
            template: self,
            ctx,
        };
        let opt_u32 = |key: &str| -> anyhow::Result<Option<u32>> {
            props
                .get(key)
                .map(|v| r.unsigned(v).with_context(|| key.to_owned()))
                .transpose()
        };
        let opt_bool = |key: &str| -> anyhow::Result<Option<bool>> {
            props
                .get(key)
                .map(|v| r.boolean(v).with_context(|| key.to_owned()))
                .transpose()
        };

        let fifo_queue = opt_bool("FifoQueue")?.unwrap_or(false);
        let queue_name = match props.get("QueueName") {
            Some(v) => r.string(v).context("QueueName")?,
            None if fifo_queue => format!("{}-{id}.fifo", ctx.stack_name),
            None => format!("{}-{id}", ctx.stack_name),
        };
        ensure!(
            fifo_queue == queue_name.ends_with(".fifo"),
            "QueueName {queue_name}: a FIFO queue's name must end in .fifo, and only a FIFO queue's"
        );

        let redrive_policy = props
            .get("RedrivePolicy")
            .map(|v| r.redrive_policy(v))
            .transpose()
            .context("RedrivePolicy")?;

        Ok(QueueSpec {
            logical_id: id.to_owned(),
            queue_name,
            fifo_queue,
            content_based_deduplication: opt_bool("ContentBasedDeduplication")?,
            visibility_timeout: opt_u32("VisibilityTimeout")?,
            message_retention_period: opt_u32("MessageRetentionPeriod")?,
            delay_seconds: opt_u32("DelaySeconds")?,
            maximum_message_size: opt_u32("MaximumMessageSize")?,
            receive_message_wait_time_seconds: opt_u32("ReceiveMessageWaitTimeSeconds")?,
            sqs_managed_sse_enabled: opt_bool("SqsManagedSseEnabled")?,
            redrive_policy,
        })
    }
}

// ------------------------------------------------------------------------------------
// Intrinsics
// ------------------------------------------------------------------------------------

/// An intrinsic function call, whichever form it was written in.
enum Intrinsic<'a> {
    Ref(&'a Value),
    Sub(&'a Value),
    GetAtt(&'a Value),
    Join(&'a Value),
    Other(String),
}

fn intrinsic(value: &Value) -> Option<Intrinsic<'_>> {
    match value {
        Value::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.trim_start_matches('!');
            Some(match name {
                "Ref" => Intrinsic::Ref(&tagged.value),
                "Sub" => Intrinsic::Sub(&tagged.value),
                "GetAtt" => Intrinsic::GetAtt(&tagged.value),
                "Join" => Intrinsic::Join(&tagged.value),
                _ => Intrinsic::Other(format!("!{name}")),
            })
        }
        Value::Mapping(map) if map.len() == 1 => {
            let (key, arg) = map.iter().next()?;
            Some(match key.as_str()? {
                "Ref" => Intrinsic::Ref(arg),
                "Fn::Sub" => Intrinsic::Sub(arg),
                "Fn::GetAtt" => Intrinsic::GetAtt(arg),
                "Fn::Join" => Intrinsic::Join(arg),
                other if other.starts_with("Fn::") || other == "Condition" => {
                    Intrinsic::Other(other.to_owned())
                }
                _ => return None,
            })
        }
        _ => None,
    }
}

/// `!GetAtt X.Attr`, `!GetAtt [X, Attr]` or `Fn::GetAtt: [X, Attr]` → `(X, Attr)`.
fn get_att_target(arg: &Value) -> anyhow::Result<(String, String)> {
    match arg {
        Value::String(s) => {
            let (id, attr) = s
                .split_once('.')
                .ok_or_else(|| anyhow!("GetAtt {s}: expected LogicalId.Attribute"))?;
            Ok((id.to_owned(), attr.to_owned()))
        }
        Value::Sequence(items) if items.len() == 2 => {
            match (items[0].as_str(), items[1].as_str()) {
                (Some(id), Some(attr)) => Ok((id.to_owned(), attr.to_owned())),
                _ => bail!("GetAtt: expected [LogicalId, Attribute] strings"),
            }
        }
        _ => bail!("GetAtt: expected LogicalId.Attribute or [LogicalId, Attribute]"),
    }
}

struct Resolver<'a> {
    template: &'a Template,
    ctx: &'a ResolveContext,
}

impl Resolver<'_> {
    /// A scalar, or an intrinsic that resolves to a string.
    fn string(&self, value: &Value) -> anyhow::Result<String> {
        match value {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => match intrinsic(value) {
                Some(Intrinsic::Ref(arg)) => {
                    let name = arg
                        .as_str()
                        .ok_or_else(|| anyhow!("Ref: expected a name"))?;
                    self.variable(name, None)
                }
                Some(Intrinsic::Sub(arg)) => self.sub(arg),
                Some(Intrinsic::Join(arg)) => self.join(arg),
                Some(Intrinsic::GetAtt(arg)) => {
                    let (id, attr) = get_att_target(arg)?;
                    self.attribute(&id, &attr)
                }
                Some(Intrinsic::Other(name)) => bail!("intrinsic {name} is not supported"),
                None => bail!("expected a string, found {}", describe(value)),
            },
        }
    }

    fn unsigned(&self, value: &Value) -> anyhow::Result<u32> {
        let text = self.string(value)?;
        text.trim()
            .parse()
            .with_context(|| format!("expected a non-negative integer, found {text:?}"))
    }

    fn boolean(&self, value: &Value) -> anyhow::Result<bool> {
        let text = self.string(value)?;
        match text.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => bail!("expected true or false, found {text:?}"),
        }
    }

    /// A pseudo parameter, a template parameter, or (for `!Sub` with a variable map) one of
    /// the map's variables.
    fn variable(&self, name: &str, vars: Option<&Mapping>) -> anyhow::Result<String> {
        if let Some(value) = vars.and_then(|vars| vars.get(name)) {
            return self.string(value);
        }
        let ctx = self.ctx;
        Ok(match name {
            "AWS::StackName" => ctx.stack_name.clone(),
            "AWS::Region" => ctx.region.clone(),
            "AWS::AccountId" => ctx.account_id.clone(),
            "AWS::Partition" => ctx.partition().to_owned(),
            "AWS::URLSuffix" if ctx.partition() == "aws-cn" => "amazonaws.com.cn".to_owned(),
            "AWS::URLSuffix" => "amazonaws.com".to_owned(),
            _ => {
                if let Some(value) = ctx.parameters.get(name) {
                    value.clone()
                } else if let Some(declared) = self.template.parameters.get(name) {
                    let default = declared
                        .as_ref()
                        .ok_or_else(|| anyhow!("parameter {name} has no value and no Default"))?;
                    self.string(default)?
                } else if let Some(deployed) = ctx.deployed.get(name) {
                    deployed.reference.clone()
                } else if self.template.resources.contains_key(name) {
                    bail!(
                        "reference to resource {name} is only known once deployed; not supported here"
                    )
                } else {
                    bail!("unknown reference {name}")
                }
            }
        })
    }

    /// `!Sub "text"` or `!Sub ["text", {Var: value}]`.
    fn sub(&self, arg: &Value) -> anyhow::Result<String> {
        let (text, vars) = match arg {
            Value::String(s) => (s.as_str(), None),
            Value::Sequence(items) if items.len() == 2 => (
                items[0]
                    .as_str()
                    .ok_or_else(|| anyhow!("Sub: first item must be a string"))?,
                Some(
                    items[1]
                        .as_mapping()
                        .ok_or_else(|| anyhow!("Sub: second item must be a mapping"))?,
                ),
            ),
            _ => bail!("Sub: expected a string or [string, mapping]"),
        };
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            // `${!Literal}` is written out as `${Literal}`.
            if let Some(literal) = after.strip_prefix('!') {
                let end = literal
                    .find('}')
                    .ok_or_else(|| anyhow!("Sub {text:?}: unclosed ${{!"))?;
                out.push_str("${");
                out.push_str(&literal[..=end]);
                rest = &literal[end + 1..];
                continue;
            }
            let end = after
                .find('}')
                .ok_or_else(|| anyhow!("Sub {text:?}: unclosed ${{"))?;
            let name = after[..end].trim();
            if let Some((id, attr)) = name.split_once('.').filter(|_| !name.starts_with("AWS::")) {
                out.push_str(
                    &self
                        .attribute(id, attr)
                        .with_context(|| format!("Sub {text:?}"))?,
                );
                rest = &after[end + 1..];
                continue;
            }
            out.push_str(
                &self
                    .variable(name, vars)
                    .with_context(|| format!("Sub {text:?}"))?,
            );
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `!GetAtt id.attr` of a provisioned resource.
    fn attribute(&self, id: &str, attr: &str) -> anyhow::Result<String> {
        match self
            .ctx
            .deployed
            .get(id)
            .and_then(|d| d.attributes.get(attr))
        {
            Some(value) => Ok(value.clone()),
            None if self.template.resources.contains_key(id) => {
                bail!("GetAtt {id}.{attr} is only known once deployed; not supported here")
            }
            None => bail!("GetAtt {id}.{attr}: no resource {id} in the template"),
        }
    }

    /// `!Join [delimiter, [values...]]`.
    fn join(&self, arg: &Value) -> anyhow::Result<String> {
        let items = arg
            .as_sequence()
            .filter(|items| items.len() == 2)
            .ok_or_else(|| anyhow!("Join: expected [delimiter, [values]]"))?;
        let delimiter = items[0]
            .as_str()
            .ok_or_else(|| anyhow!("Join: delimiter must be a string"))?;
        let parts = items[1]
            .as_sequence()
            .ok_or_else(|| anyhow!("Join: values must be a list"))?
            .iter()
            .map(|v| self.string(v))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(parts.join(delimiter))
    }

    fn key_schema(&self, value: &Value) -> anyhow::Result<KeySchema> {
        let mut hash_key = None;
        let mut range_key = None;
        for element in value
            .as_sequence()
            .ok_or_else(|| anyhow!("expected a list"))?
        {
            let name = self.string(field(element, "AttributeName")?)?;
            match self.string(field(element, "KeyType")?)?.as_str() {
                "HASH" if hash_key.is_none() => hash_key = Some(name),
                "RANGE" if range_key.is_none() => range_key = Some(name),
                other => bail!("unexpected or repeated KeyType {other}"),
            }
        }
        Ok(KeySchema {
            hash_key: hash_key.ok_or_else(|| anyhow!("no HASH key"))?,
            range_key,
        })
    }

    fn projection(&self, value: &Value) -> anyhow::Result<Projection> {
        let kind = match value.get("ProjectionType") {
            Some(v) => self.string(v)?,
            None => "KEYS_ONLY".to_owned(),
        };
        Ok(match kind.as_str() {
            "ALL" => Projection::All,
            "KEYS_ONLY" => Projection::KeysOnly,
            "INCLUDE" => Projection::Include(
                field(value, "NonKeyAttributes")?
                    .as_sequence()
                    .ok_or_else(|| anyhow!("NonKeyAttributes is not a list"))?
                    .iter()
                    .map(|v| self.string(v))
                    .collect::<anyhow::Result<_>>()?,
            ),
            other => bail!("unknown ProjectionType {other}"),
        })
    }

    fn throughput(&self, value: &Value) -> anyhow::Result<Throughput> {
        let units = |key: &str| -> anyhow::Result<i64> {
            Ok(i64::from(
                self.unsigned(field(value, key)?)
                    .with_context(|| key.to_owned())?,
            ))
        };
        Ok(Throughput {
            read_capacity_units: units("ReadCapacityUnits")?,
            write_capacity_units: units("WriteCapacityUnits")?,
        })
    }

    /// `{deadLetterTargetArn, maxReceiveCount}`, as a mapping or as a JSON string.
    fn redrive_policy(&self, value: &Value) -> anyhow::Result<RedrivePolicy> {
        let parsed;
        let policy = match value {
            Value::String(json) => {
                parsed = serde_yaml::from_str::<Value>(json).context("RedrivePolicy JSON")?;
                &parsed
            }
            other => other,
        };
        let target = field(policy, "deadLetterTargetArn")?;
        let dead_letter_target = match intrinsic(target) {
            Some(Intrinsic::GetAtt(arg)) => {
                let (id, attr) = get_att_target(arg)?;
                ensure!(
                    attr == "Arn",
                    "deadLetterTargetArn: expected !GetAtt {id}.Arn, found .{attr}"
                );
                DeadLetterTarget::Queue(id)
            }
            _ => DeadLetterTarget::Arn(self.string(target).context("deadLetterTargetArn")?),
        };
        let max_receive_count = self
            .unsigned(field(policy, "maxReceiveCount")?)
            .context("maxReceiveCount")?;
        Ok(RedrivePolicy {
            dead_letter_target,
            max_receive_count,
        })
    }
}

// ------------------------------------------------------------------------------------
// Small helpers
// ------------------------------------------------------------------------------------

fn key_str<'a>(key: &'a Value, section: &str) -> anyhow::Result<&'a str> {
    key.as_str()
        .ok_or_else(|| anyhow!("{section}: non-string key {}", describe(key)))
}

fn field<'a>(value: &'a Value, key: &str) -> anyhow::Result<&'a Value> {
    value.get(key).ok_or_else(|| anyhow!("missing {key}"))
}

fn required<'a>(props: &'a Mapping, key: &str) -> anyhow::Result<&'a Value> {
    props.get(key).ok_or_else(|| anyhow!("missing {key}"))
}

fn seq<'a>(props: &'a Mapping, key: &str) -> anyhow::Result<&'a [Value]> {
    required(props, key)?
        .as_sequence()
        .map(Vec::as_slice)
        .ok_or_else(|| anyhow!("{key} is not a list"))
}

fn describe(value: &Value) -> impl fmt::Display + '_ {
    struct D<'a>(&'a Value);
    impl fmt::Display for D<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self.0 {
                Value::Null => f.write_str("null"),
                Value::Bool(_) => f.write_str("a boolean"),
                Value::Number(_) => f.write_str("a number"),
                Value::String(_) => f.write_str("a string"),
                Value::Sequence(_) => f.write_str("a list"),
                Value::Mapping(_) => f.write_str("a mapping"),
                Value::Tagged(t) => write!(f, "tag {}", t.tag),
            }
        }
    }
    D(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ResolveContext {
        ResolveContext::new("stk", "eu-central-1", "123456789012")
    }

    const SHORT: &str = r#"
Parameters:
  Env:
    Type: String
    Default: dev
Resources:
  Things:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: !Sub "${AWS::StackName}-things-${Env}"
      BillingMode: PAY_PER_REQUEST
      AttributeDefinitions:
        - { AttributeName: pk, AttributeType: S }
        - { AttributeName: n, AttributeType: N }
      KeySchema:
        - { AttributeName: pk, KeyType: HASH }
      GlobalSecondaryIndexes:
        - IndexName: ByN
          KeySchema:
            - { AttributeName: n, KeyType: HASH }
          Projection:
            ProjectionType: INCLUDE
            NonKeyAttributes: [a, b]
      TimeToLiveSpecification: { AttributeName: ttl, Enabled: true }
  Work:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Join ["-", [!Ref AWS::StackName, work, !Ref AWS::Region]]
      VisibilityTimeout: 60
      DelaySeconds: "5"
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt [WorkDlq, Arn]
        maxReceiveCount: 3
  WorkDlq:
    Type: AWS::SQS::Queue
    Properties:
      QueueName: !Sub ["${Prefix}-dlq-${AWS::AccountId}", { Prefix: !Ref "AWS::StackName" }]
  Alarm:
    Type: AWS::CloudWatch::Alarm
    Properties: { Namespace: AWS/SQS }
"#;

    const LONG: &str = r#"{
  "Resources": {
    "Fifo": {
      "Type": "AWS::SQS::Queue",
      "Properties": {
        "QueueName": { "Fn::Sub": "${AWS::StackName}-jobs.fifo" },
        "FifoQueue": true,
        "ContentBasedDeduplication": "true",
        "RedrivePolicy": "{\"deadLetterTargetArn\": \"arn:aws:sqs:eu-central-1:1:x.fifo\", \"maxReceiveCount\": \"7\"}"
      }
    },
    "Other": {
      "Type": "AWS::SQS::Queue",
      "Properties": {
        "QueueName": { "Fn::Join": ["", [{ "Ref": "AWS::StackName" }, "-other"]] },
        "RedrivePolicy": {
          "deadLetterTargetArn": { "Fn::GetAtt": ["Fifo", "Arn"] },
          "maxReceiveCount": 2
        }
      }
    },
    "Prov": {
      "Type": "AWS::DynamoDB::Table",
      "Properties": {
        "AttributeDefinitions": [{ "AttributeName": "id", "AttributeType": "S" }],
        "KeySchema": [{ "AttributeName": "id", "KeyType": "HASH" }],
        "ProvisionedThroughput": { "ReadCapacityUnits": 2, "WriteCapacityUnits": "3" }
      }
    }
  }
}"#;

    #[test]
    fn short_form_tags_resolve() {
        let t = Template::parse(SHORT).unwrap();
        let tables = t.tables(&ctx()).unwrap();
        assert_eq!(tables.len(), 1);
        let things = &tables[0];
        assert_eq!(things.table_name, "stk-things-dev");
        assert_eq!(things.billing_mode, BillingMode::PayPerRequest);
        assert_eq!(
            things.key_schema,
            KeySchema {
                hash_key: "pk".into(),
                range_key: None
            }
        );
        assert_eq!(things.global_secondary_indexes[0].index_name, "ByN");
        assert_eq!(
            things.global_secondary_indexes[0].projection,
            Projection::Include(vec!["a".into(), "b".into()])
        );
        assert_eq!(things.ttl_attribute.as_deref(), Some("ttl"));
        assert!(!things.sse_enabled && !things.point_in_time_recovery);

        let queues = t.queues(&ctx()).unwrap();
        assert_eq!(queues.len(), 2, "the alarm is skipped");
        let work = queues.iter().find(|q| q.logical_id == "Work").unwrap();
        assert_eq!(work.queue_name, "stk-work-eu-central-1");
        assert_eq!(work.visibility_timeout, Some(60));
        assert_eq!(work.delay_seconds, Some(5));
        assert_eq!(work.message_retention_period, None);
        assert_eq!(
            work.redrive_policy,
            Some(RedrivePolicy {
                dead_letter_target: DeadLetterTarget::Queue("WorkDlq".into()),
                max_receive_count: 3
            })
        );
        let dlq = queues.iter().find(|q| q.logical_id == "WorkDlq").unwrap();
        assert_eq!(dlq.queue_name, "stk-dlq-123456789012");
        assert_eq!(dlq.redrive_policy, None);
    }

    #[test]
    fn parameter_overrides_win_over_defaults() {
        let t = Template::parse(SHORT).unwrap();
        let tables = t.tables(&ctx().with_parameter("Env", "prod")).unwrap();
        assert_eq!(tables[0].table_name, "stk-things-prod");
    }

    #[test]
    fn long_forms_and_json_resolve() {
        let t = Template::parse(LONG).unwrap();
        let queues = t.queues(&ctx()).unwrap();
        let fifo = queues.iter().find(|q| q.logical_id == "Fifo").unwrap();
        assert_eq!(fifo.queue_name, "stk-jobs.fifo");
        assert!(fifo.fifo_queue);
        assert_eq!(fifo.content_based_deduplication, Some(true));
        assert_eq!(
            fifo.redrive_policy,
            Some(RedrivePolicy {
                dead_letter_target: DeadLetterTarget::Arn(
                    "arn:aws:sqs:eu-central-1:1:x.fifo".into()
                ),
                max_receive_count: 7
            })
        );
        let other = queues.iter().find(|q| q.logical_id == "Other").unwrap();
        assert_eq!(other.queue_name, "stk-other");
        assert_eq!(
            other.redrive_policy.as_ref().unwrap().dead_letter_target,
            DeadLetterTarget::Queue("Fifo".into())
        );

        let tables = t.tables(&ctx()).unwrap();
        assert_eq!(
            tables[0].table_name, "stk-Prov",
            "a table without TableName"
        );
        assert_eq!(
            tables[0].billing_mode,
            BillingMode::Provisioned(Throughput {
                read_capacity_units: 2,
                write_capacity_units: 3
            })
        );
    }

    #[test]
    fn sub_literal_escape() {
        let t = Template::parse("Resources: {}").unwrap();
        let r = Resolver {
            template: &t,
            ctx: &ctx(),
        };
        let v: Value = serde_yaml::from_str(r#"!Sub "${!Literal}-${AWS::Partition}""#).unwrap();
        assert_eq!(r.string(&v).unwrap(), "${Literal}-aws");
    }

    #[test]
    fn errors_name_the_resource_and_property() {
        let bad = SHORT.replace("!GetAtt [WorkDlq, Arn]", "!GetAtt [Missing, Arn]");
        let err = Template::parse(&bad).unwrap().queues(&ctx()).unwrap_err();
        assert!(format!("{err:#}").contains("Missing"), "{err:#}");

        let bad = SHORT.replace("${Env}", "${Nope}");
        let err = Template::parse(&bad).unwrap().tables(&ctx()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("Things") && msg.contains("TableName") && msg.contains("Nope"),
            "{msg}"
        );

        let bad = SHORT.replace(
            "AttributeName: n, AttributeType: N",
            "AttributeName: m, AttributeType: N",
        );
        assert!(Template::parse(&bad).unwrap().tables(&ctx()).is_err());
    }

    #[test]
    fn the_repository_template_parses() {
        let t =
            Template::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml")).unwrap();
        let tables = t.tables(&ctx()).unwrap();
        assert!(!tables.is_empty());
        assert!(tables.iter().all(|t| t.table_name.starts_with("stk-")));
        let queues = t.queues(&ctx()).unwrap();
        assert!(queues.iter().any(|q| q.redrive_policy.is_some()));
    }
}
