//! Provisions local AWS (moto, LocalStack, or any endpoint the SDK config points at) from
//! template.yaml: every DynamoDB table and SQS queue the template declares, nothing more,
//! and nothing defined here. Idempotent: resources that already exist are left as they are,
//! so re-running is fine.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types as ddb;
use aws_sdk_sqs::types::QueueAttributeName;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::template::{
    BillingMode, DeadLetterTarget, DeployedResource, KeySchema, Projection, QueueSpec,
    ResolveContext, TableSpec, Template, Throughput,
};

pub use crate::template::template_path;

/// Account id used for `${AWS::AccountId}` when `AWS_ACCOUNT_ID` is not set (moto's default
/// account; LocalStack's is 000000000000).
pub const DEFAULT_ACCOUNT_ID: &str = "123456789012";
/// Region used for `${AWS::Region}` when the SDK config has none.
pub const DEFAULT_REGION: &str = "us-east-1";

/// How long to wait for a new table to become ACTIVE (immediate on moto/LocalStack).
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(300);

/// What [`provision`] created or found, by logical id of the template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provisioned {
    pub stack_name: String,
    /// Logical id → table name.
    pub tables: BTreeMap<String, String>,
    /// Logical id → queue.
    pub queues: BTreeMap<String, ProvisionedQueue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionedQueue {
    pub url: String,
    pub arn: String,
}

impl Provisioned {
    /// What `!Ref` / `!GetAtt` of each provisioned resource resolve to, for resolving the
    /// rest of the template (function environments) against this stack.
    pub fn deployed(&self, region: &str, account_id: &str) -> BTreeMap<String, DeployedResource> {
        let mut out = BTreeMap::new();
        for (id, name) in &self.tables {
            let arn = format!("arn:aws:dynamodb:{region}:{account_id}:table/{name}");
            out.insert(
                id.clone(),
                DeployedResource {
                    reference: name.clone(),
                    attributes: BTreeMap::from([("Arn".to_owned(), arn)]),
                },
            );
        }
        for (id, queue) in &self.queues {
            let name = queue.arn.rsplit(':').next().unwrap_or_default().to_owned();
            out.insert(
                id.clone(),
                DeployedResource {
                    reference: queue.url.clone(),
                    attributes: BTreeMap::from([
                        ("Arn".to_owned(), queue.arn.clone()),
                        ("QueueName".to_owned(), name),
                        ("QueueUrl".to_owned(), queue.url.clone()),
                    ]),
                },
            );
        }
        out
    }

    /// Table name of the template's table `logical_id`.
    ///
    /// # Panics
    /// When the template declares no such table: a wiring bug, not a runtime condition.
    pub fn table(&self, logical_id: &str) -> &str {
        self.tables.get(logical_id).unwrap_or_else(|| {
            panic!(
                "template.yaml has no table {logical_id}; tables: {:?}",
                self.tables.keys().collect::<Vec<_>>()
            )
        })
    }

    /// Queue URL of the template's queue `logical_id`.
    ///
    /// # Panics
    /// When the template declares no such queue: a wiring bug, not a runtime condition.
    pub fn queue_url(&self, logical_id: &str) -> &str {
        &self.queue(logical_id).url
    }

    /// Queue URL and ARN of the template's queue `logical_id`.
    ///
    /// # Panics
    /// When the template declares no such queue.
    pub fn queue(&self, logical_id: &str) -> &ProvisionedQueue {
        self.queues.get(logical_id).unwrap_or_else(|| {
            panic!(
                "template.yaml has no queue {logical_id}; queues: {:?}",
                self.queues.keys().collect::<Vec<_>>()
            )
        })
    }

    /// Environment variables for the functions and tools, derived from the logical ids:
    /// `ConsentsTable` → `CONSENTS_TABLE=<name>`, `PaymentStatusQueue` →
    /// `PAYMENT_STATUS_QUEUE_URL=<url>`, `PaymentStatusDLQ` → `PAYMENT_STATUS_DLQ_URL=<url>`.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let tables = self.tables.iter().map(|(id, name)| {
            let key = screaming_snake(id);
            let key = if key.ends_with("_TABLE") {
                key
            } else {
                format!("{key}_TABLE")
            };
            (key, name.clone())
        });
        let queues = self.queues.iter().map(|(id, queue)| {
            let key = screaming_snake(id);
            let key = if key.ends_with("_QUEUE") || key.ends_with("_DLQ") || key == "DLQ" {
                format!("{key}_URL")
            } else {
                format!("{key}_QUEUE_URL")
            };
            (key, queue.url.clone())
        });
        tables.chain(queues).collect()
    }
}

/// `PaymentStatusDLQ` → `PAYMENT_STATUS_DLQ`, `Gsi1Table` → `GSI1_TABLE`.
pub fn screaming_snake(camel: &str) -> String {
    let chars: Vec<char> = camel.chars().collect();
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        if c == '-' || c == '_' || c == ' ' {
            if !out.ends_with('_') {
                out.push('_');
            }
            continue;
        }
        if i > 0 && c.is_uppercase() && !out.ends_with('_') {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push('_');
            }
        }
        out.extend(c.to_uppercase());
    }
    out
}

/// Provisions every table and queue of `template` under `stack_name`, with `${AWS::Region}`
/// from the SDK config (else [`DEFAULT_REGION`]) and `${AWS::AccountId}` from
/// `AWS_ACCOUNT_ID` (else [`DEFAULT_ACCOUNT_ID`]).
pub async fn provision(
    sdk: &aws_config::SdkConfig,
    template: &Template,
    stack_name: &str,
) -> anyhow::Result<Provisioned> {
    provision_with(sdk, template, &resolve_context(sdk, stack_name)).await
}

/// The pseudo parameters of a local stack: `${AWS::Region}` from the SDK config (else
/// [`DEFAULT_REGION`]), `${AWS::AccountId}` from `AWS_ACCOUNT_ID` (else
/// [`DEFAULT_ACCOUNT_ID`]).
pub fn resolve_context(sdk: &aws_config::SdkConfig, stack_name: &str) -> ResolveContext {
    let region = sdk
        .region()
        .map_or_else(|| DEFAULT_REGION.to_owned(), |r| r.to_string());
    let account_id = std::env::var("AWS_ACCOUNT_ID")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| DEFAULT_ACCOUNT_ID.to_owned());
    ResolveContext::new(stack_name, region, account_id)
}

/// [`provision`] with an explicit resolution context (pseudo parameters, parameter values).
pub async fn provision_with(
    sdk: &aws_config::SdkConfig,
    template: &Template,
    ctx: &ResolveContext,
) -> anyhow::Result<Provisioned> {
    // Resolve everything before touching AWS: a template error creates nothing.
    let tables = template.tables(ctx)?;
    let queues = template.queues(ctx)?;

    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let mut out = Provisioned {
        stack_name: ctx.stack_name.clone(),
        ..Provisioned::default()
    };

    for table in &tables {
        ensure_table(&dynamodb, table).await.with_context(|| {
            format!(
                "provisioning table {} ({})",
                table.logical_id, table.table_name
            )
        })?;
        out.tables
            .insert(table.logical_id.clone(), table.table_name.clone());
    }

    // Dead-letter queues before the queues that redrive into them.
    for queue in redrive_order(&queues)? {
        let dlq_arn = match queue.redrive_policy.as_ref().map(|p| &p.dead_letter_target) {
            None => None,
            Some(DeadLetterTarget::Arn(arn)) => Some(arn.clone()),
            Some(DeadLetterTarget::Queue(id)) => Some(out.queue(id).arn.clone()),
        };
        let provisioned = ensure_queue(&sqs, queue, dlq_arn.as_deref())
            .await
            .with_context(|| {
                format!(
                    "provisioning queue {} ({})",
                    queue.logical_id, queue.queue_name
                )
            })?;
        out.queues.insert(queue.logical_id.clone(), provisioned);
    }
    Ok(out)
}

/// The names `template` *would* get under `ctx`, without creating anything: for checks
/// and benchmarks that need a runtime plan but no AWS.
pub fn stand_in(template: &Template, ctx: &ResolveContext) -> anyhow::Result<Provisioned> {
    let mut out = Provisioned {
        stack_name: ctx.stack_name.clone(),
        ..Provisioned::default()
    };
    for table in template.tables(ctx)? {
        out.tables.insert(table.logical_id, table.table_name);
    }
    for queue in template.queues(ctx)? {
        out.queues.insert(
            queue.logical_id,
            ProvisionedQueue {
                url: format!(
                    "http://127.0.0.1:4566/{}/{}",
                    ctx.account_id, queue.queue_name
                ),
                arn: format!(
                    "arn:aws:sqs:{}:{}:{}",
                    ctx.region, ctx.account_id, queue.queue_name
                ),
            },
        );
    }
    Ok(out)
}

/// Deletes the tables and queues of `provisioned` (tests). Missing ones are fine.
pub async fn teardown(
    sdk: &aws_config::SdkConfig,
    provisioned: &Provisioned,
) -> anyhow::Result<()> {
    let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let mut failures = Vec::new();

    for name in provisioned.tables.values() {
        match dynamodb.delete_table().table_name(name).send().await {
            Ok(_) => info!(table = %name, "deleted table"),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_not_found_exception()) => {}
            Err(e) => failures.push(format!("table {name}: {}", DisplayErrorContext(&e))),
        }
    }
    for queue in provisioned.queues.values() {
        match sqs.delete_queue().queue_url(&queue.url).send().await {
            Ok(_) => info!(queue = %queue.url, "deleted queue"),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_queue_does_not_exist()) => {}
            Err(e) => failures.push(format!("queue {}: {}", queue.url, DisplayErrorContext(&e))),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("teardown failed: {}", failures.join("; "))
    }
}

// ------------------------------------------------------------------------------------
// DynamoDB
// ------------------------------------------------------------------------------------

async fn ensure_table(client: &aws_sdk_dynamodb::Client, spec: &TableSpec) -> anyhow::Result<()> {
    let name = spec.table_name.as_str();
    let exists = match client.describe_table().table_name(name).send().await {
        Ok(_) => true,
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_resource_not_found_exception()) =>
        {
            false
        }
        Err(e) => bail!("DescribeTable: {}", DisplayErrorContext(&e)),
    };

    if exists {
        info!(table = name, "table exists, left as it is");
    } else {
        match create_table_request(client, spec)?.send().await {
            Ok(_) => info!(table = name, "created table"),
            // Created concurrently by someone else: same outcome.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_resource_in_use_exception()) =>
            {
                info!(table = name, "table appeared concurrently, left as it is");
            }
            Err(e) => bail!("CreateTable: {}", DisplayErrorContext(&e)),
        }
    }

    client
        .wait_until_table_exists()
        .table_name(name)
        .wait(TABLE_ACTIVE_TIMEOUT)
        .await
        .map_err(|e| {
            anyhow!(
                "waiting for the table to become ACTIVE: {}",
                DisplayErrorContext(&e)
            )
        })?;

    if let Some(attribute) = &spec.ttl_attribute {
        ensure_ttl(client, name, attribute).await?;
    }
    if spec.point_in_time_recovery {
        ensure_point_in_time_recovery(client, name).await?;
    }
    Ok(())
}

fn create_table_request(
    client: &aws_sdk_dynamodb::Client,
    spec: &TableSpec,
) -> anyhow::Result<aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder> {
    let mut request = client
        .create_table()
        .table_name(&spec.table_name)
        .set_key_schema(Some(key_schema(&spec.key_schema)?));
    for attribute in &spec.attribute_definitions {
        request = request.attribute_definitions(
            ddb::AttributeDefinition::builder()
                .attribute_name(&attribute.name)
                .attribute_type(ddb::ScalarAttributeType::from(
                    attribute.attribute_type.as_str(),
                ))
                .build()?,
        );
    }
    request = match spec.billing_mode {
        BillingMode::PayPerRequest => request.billing_mode(ddb::BillingMode::PayPerRequest),
        BillingMode::Provisioned(throughput) => request
            .billing_mode(ddb::BillingMode::Provisioned)
            .provisioned_throughput(provisioned_throughput(throughput)?),
    };
    for gsi in &spec.global_secondary_indexes {
        let projection = match &gsi.projection {
            Projection::All => ddb::Projection::builder().projection_type(ddb::ProjectionType::All),
            Projection::KeysOnly => {
                ddb::Projection::builder().projection_type(ddb::ProjectionType::KeysOnly)
            }
            Projection::Include(attributes) => ddb::Projection::builder()
                .projection_type(ddb::ProjectionType::Include)
                .set_non_key_attributes(Some(attributes.clone())),
        }
        .build();
        let mut index = ddb::GlobalSecondaryIndex::builder()
            .index_name(&gsi.index_name)
            .set_key_schema(Some(key_schema(&gsi.key_schema)?))
            .projection(projection);
        if let Some(throughput) = gsi.throughput {
            index = index.provisioned_throughput(provisioned_throughput(throughput)?);
        }
        request = request.global_secondary_indexes(index.build()?);
    }
    if spec.sse_enabled {
        request = request.sse_specification(ddb::SseSpecification::builder().enabled(true).build());
    }
    Ok(request)
}

fn key_schema(keys: &KeySchema) -> anyhow::Result<Vec<ddb::KeySchemaElement>> {
    let hash = ddb::KeySchemaElement::builder()
        .attribute_name(&keys.hash_key)
        .key_type(ddb::KeyType::Hash)
        .build()?;
    let mut out = vec![hash];
    if let Some(range) = &keys.range_key {
        out.push(
            ddb::KeySchemaElement::builder()
                .attribute_name(range)
                .key_type(ddb::KeyType::Range)
                .build()?,
        );
    }
    Ok(out)
}

fn provisioned_throughput(t: Throughput) -> anyhow::Result<ddb::ProvisionedThroughput> {
    Ok(ddb::ProvisionedThroughput::builder()
        .read_capacity_units(t.read_capacity_units)
        .write_capacity_units(t.write_capacity_units)
        .build()?)
}

/// Enables TTL on `attribute` unless TTL is already enabled (or being enabled). TTL enabled
/// on another attribute is left alone with a warning: changing it is a deliberate act.
async fn ensure_ttl(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    attribute: &str,
) -> anyhow::Result<()> {
    let current = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|e| anyhow!("DescribeTimeToLive: {}", DisplayErrorContext(&e)))?;
    let description = current.time_to_live_description();
    let status = description.and_then(|d| d.time_to_live_status());
    let current_attribute = description.and_then(|d| d.attribute_name());
    match status {
        Some(ddb::TimeToLiveStatus::Enabled | ddb::TimeToLiveStatus::Enabling) => {
            if current_attribute != Some(attribute) {
                warn!(
                    table,
                    wanted = attribute,
                    current = ?current_attribute,
                    "TTL is enabled on another attribute; left as it is"
                );
            }
            Ok(())
        }
        _ => {
            client
                .update_time_to_live()
                .table_name(table)
                .time_to_live_specification(
                    ddb::TimeToLiveSpecification::builder()
                        .attribute_name(attribute)
                        .enabled(true)
                        .build()?,
                )
                .send()
                .await
                .map_err(|e| anyhow!("UpdateTimeToLive: {}", DisplayErrorContext(&e)))?;
            info!(table, attribute, "enabled TTL");
            Ok(())
        }
    }
}

async fn ensure_point_in_time_recovery(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> anyhow::Result<()> {
    let current = client
        .describe_continuous_backups()
        .table_name(table)
        .send()
        .await
        .map_err(|e| anyhow!("DescribeContinuousBackups: {}", DisplayErrorContext(&e)))?;
    let enabled = current
        .continuous_backups_description()
        .and_then(|d| d.point_in_time_recovery_description())
        .and_then(|d| d.point_in_time_recovery_status())
        == Some(&ddb::PointInTimeRecoveryStatus::Enabled);
    if !enabled {
        client
            .update_continuous_backups()
            .table_name(table)
            .point_in_time_recovery_specification(
                ddb::PointInTimeRecoverySpecification::builder()
                    .point_in_time_recovery_enabled(true)
                    .build()?,
            )
            .send()
            .await
            .map_err(|e| anyhow!("UpdateContinuousBackups: {}", DisplayErrorContext(&e)))?;
        info!(table, "enabled point-in-time recovery");
    }
    Ok(())
}

// ------------------------------------------------------------------------------------
// SQS
// ------------------------------------------------------------------------------------

/// Queues ordered so that every queue comes after the template queue it redrives into.
fn redrive_order(queues: &[QueueSpec]) -> anyhow::Result<Vec<&QueueSpec>> {
    let mut ordered: Vec<&QueueSpec> = Vec::with_capacity(queues.len());
    let mut pending: Vec<&QueueSpec> = queues.iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        let (ready, blocked): (Vec<_>, Vec<_>) = pending.into_iter().partition(|q| {
            match q.redrive_policy.as_ref().map(|p| &p.dead_letter_target) {
                Some(DeadLetterTarget::Queue(dlq)) => ordered.iter().any(|o| &o.logical_id == dlq),
                _ => true,
            }
        });
        ordered.extend(ready);
        pending = blocked;
        if pending.len() == before {
            let ids: Vec<_> = pending.iter().map(|q| q.logical_id.as_str()).collect();
            bail!("redrive policies form a cycle or miss their queue: {ids:?}");
        }
    }
    Ok(ordered)
}

fn queue_attributes(
    spec: &QueueSpec,
    dlq_arn: Option<&str>,
) -> anyhow::Result<HashMap<QueueAttributeName, String>> {
    let mut attributes = HashMap::new();
    let mut set = |name: QueueAttributeName, value: Option<String>| {
        if let Some(value) = value {
            attributes.insert(name, value);
        }
    };
    set(
        QueueAttributeName::FifoQueue,
        spec.fifo_queue.then(|| "true".to_owned()),
    );
    set(
        QueueAttributeName::ContentBasedDeduplication,
        spec.content_based_deduplication.map(|b| b.to_string()),
    );
    set(
        QueueAttributeName::VisibilityTimeout,
        spec.visibility_timeout.map(|v| v.to_string()),
    );
    set(
        QueueAttributeName::MessageRetentionPeriod,
        spec.message_retention_period.map(|v| v.to_string()),
    );
    set(
        QueueAttributeName::DelaySeconds,
        spec.delay_seconds.map(|v| v.to_string()),
    );
    set(
        QueueAttributeName::MaximumMessageSize,
        spec.maximum_message_size.map(|v| v.to_string()),
    );
    set(
        QueueAttributeName::ReceiveMessageWaitTimeSeconds,
        spec.receive_message_wait_time_seconds
            .map(|v| v.to_string()),
    );
    set(
        QueueAttributeName::SqsManagedSseEnabled,
        spec.sqs_managed_sse_enabled.map(|b| b.to_string()),
    );
    if let Some(policy) = &spec.redrive_policy {
        let arn = dlq_arn.ok_or_else(|| anyhow!("dead-letter queue ARN unknown"))?;
        let json = serde_json::json!({
            "deadLetterTargetArn": arn,
            "maxReceiveCount": policy.max_receive_count,
        });
        set(QueueAttributeName::RedrivePolicy, Some(json.to_string()));
    }
    Ok(attributes)
}

async fn ensure_queue(
    client: &aws_sdk_sqs::Client,
    spec: &QueueSpec,
    dlq_arn: Option<&str>,
) -> anyhow::Result<ProvisionedQueue> {
    let name = spec.queue_name.as_str();
    let url = match existing_queue_url(client, name).await? {
        Some(url) => {
            info!(queue = name, "queue exists, left as it is");
            url
        }
        None => {
            let created = client
                .create_queue()
                .queue_name(name)
                .set_attributes(Some(queue_attributes(spec, dlq_arn)?))
                .send()
                .await;
            match created {
                Ok(out) => {
                    info!(queue = name, "created queue");
                    out.queue_url()
                        .ok_or_else(|| anyhow!("CreateQueue returned no QueueUrl"))?
                        .to_owned()
                }
                // Created concurrently with other attributes: same outcome as "exists".
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_queue_name_exists()) =>
                {
                    existing_queue_url(client, name)
                        .await?
                        .ok_or_else(|| anyhow!("queue exists but has no URL"))?
                }
                Err(e) => bail!("CreateQueue: {}", DisplayErrorContext(&e)),
            }
        }
    };

    let attributes = client
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| anyhow!("GetQueueAttributes: {}", DisplayErrorContext(&e)))?;
    let arn = attributes
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn))
        .ok_or_else(|| anyhow!("GetQueueAttributes returned no QueueArn"))?
        .clone();
    Ok(ProvisionedQueue { url, arn })
}

async fn existing_queue_url(
    client: &aws_sdk_sqs::Client,
    name: &str,
) -> anyhow::Result<Option<String>> {
    match client.get_queue_url().queue_name(name).send().await {
        Ok(out) => Ok(out.queue_url().map(str::to_owned)),
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_queue_does_not_exist()) =>
        {
            Ok(None)
        }
        Err(e) => bail!("GetQueueUrl: {}", DisplayErrorContext(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screaming_snake_handles_acronyms_and_digits() {
        assert_eq!(screaming_snake("ConsentsTable"), "CONSENTS_TABLE");
        assert_eq!(screaming_snake("PaymentStatusDLQ"), "PAYMENT_STATUS_DLQ");
        assert_eq!(screaming_snake("DLQForBulk"), "DLQ_FOR_BULK");
        assert_eq!(screaming_snake("Gsi1Table"), "GSI1_TABLE");
        assert_eq!(screaming_snake("already_snake"), "ALREADY_SNAKE");
    }

    #[test]
    fn env_vars_follow_logical_ids() {
        let queue = |url: &str| ProvisionedQueue {
            url: url.into(),
            arn: format!("arn:{url}"),
        };
        let p = Provisioned {
            stack_name: "s".into(),
            tables: [("ConsentsTable", "s-consents"), ("Audit", "s-audit")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
            queues: [
                ("PaymentStatusQueue", queue("u1")),
                ("PaymentStatusDLQ", queue("u2")),
                ("Jobs", queue("u3")),
            ]
            .map(|(k, v)| (k.to_owned(), v))
            .into(),
        };
        let env: BTreeMap<_, _> = p.env_vars().into_iter().collect();
        assert_eq!(env["CONSENTS_TABLE"], "s-consents");
        assert_eq!(env["AUDIT_TABLE"], "s-audit");
        assert_eq!(env["PAYMENT_STATUS_QUEUE_URL"], "u1");
        assert_eq!(env["PAYMENT_STATUS_DLQ_URL"], "u2");
        assert_eq!(env["JOBS_QUEUE_URL"], "u3");
        assert_eq!(p.table("ConsentsTable"), "s-consents");
        assert_eq!(p.queue_url("Jobs"), "u3");
    }

    #[test]
    fn dead_letter_queues_come_first() {
        let t = Template::parse(
            r#"
Resources:
  A: { Type: AWS::SQS::Queue, Properties: { RedrivePolicy: { deadLetterTargetArn: !GetAtt B.Arn, maxReceiveCount: 1 } } }
  B: { Type: AWS::SQS::Queue, Properties: { RedrivePolicy: { deadLetterTargetArn: !GetAtt C.Arn, maxReceiveCount: 1 } } }
  C: { Type: AWS::SQS::Queue }
"#,
        )
        .unwrap();
        let queues = t.queues(&ResolveContext::new("s", "r", "1")).unwrap();
        let order: Vec<_> = redrive_order(&queues)
            .unwrap()
            .iter()
            .map(|q| q.logical_id.as_str())
            .collect();
        assert_eq!(order, ["C", "B", "A"]);
    }
}
