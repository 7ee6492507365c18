//! `AWS::Serverless::Function` resources and their events, resolved: what the local
//! runtime runs and how it is triggered. `Globals: Function:` is applied as SAM does
//! (function values win; environment variables merge).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail, ensure};
use serde_yaml::{Mapping, Value};

use super::{Intrinsic, ResolveContext, Resolver, Template, get_att_target, intrinsic};

pub const SERVERLESS_FUNCTION: &str = "AWS::Serverless::Function";
pub const SERVERLESS_HTTP_API: &str = "AWS::Serverless::HttpApi";

/// One function, as the template wires it.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub logical_id: String,
    /// `CodeUri`: the function's crate directory, relative to the template.
    pub code_uri: String,
    /// The binary cargo builds for it (`Metadata.BuildProperties.Binary`, else the
    /// package name of the crate at `CodeUri`).
    pub binary: String,
    pub timeout_secs: u32,
    pub memory_mb: u32,
    pub environment: BTreeMap<String, String>,
    pub events: Vec<EventSpec>,
}

/// A trigger of a function.
#[derive(Debug, Clone, PartialEq)]
pub enum EventSpec {
    HttpApi {
        name: String,
        method: String,
        path: String,
        /// Whether the JWT authorizer guards it (the API's default authorizer unless the
        /// event says `Auth: {Authorizer: NONE}`).
        protected: bool,
    },
    Sqs {
        name: String,
        /// Logical id of the queue.
        queue: String,
        batch_size: u32,
        batching_window_secs: u32,
        report_batch_item_failures: bool,
        max_concurrency: Option<u32>,
        enabled: bool,
    },
    Schedule {
        name: String,
        expression: String,
        enabled: bool,
        input: Option<serde_json::Value>,
    },
}

impl EventSpec {
    pub fn name(&self) -> &str {
        match self {
            EventSpec::HttpApi { name, .. }
            | EventSpec::Sqs { name, .. }
            | EventSpec::Schedule { name, .. } => name,
        }
    }
}

impl Template {
    /// Every `AWS::Serverless::Function`, in logical-id order. `template_dir` is where
    /// `CodeUri` paths start (the template's directory).
    pub fn functions(
        &self,
        ctx: &ResolveContext,
        template_dir: &Path,
    ) -> anyhow::Result<Vec<FunctionSpec>> {
        let default_protected = self.default_authorizer()?.is_some();
        self.resources
            .iter()
            .filter(|(_, r)| r.resource_type == SERVERLESS_FUNCTION)
            .map(|(id, r)| {
                self.function(id, &r.properties, ctx, template_dir, default_protected)
                    .with_context(|| format!("{SERVERLESS_FUNCTION} {id}"))
            })
            .collect()
    }

    /// The HTTP API's `Auth.DefaultAuthorizer`, if any.
    fn default_authorizer(&self) -> anyhow::Result<Option<String>> {
        let apis: Vec<_> = self
            .resources
            .iter()
            .filter(|(_, r)| r.resource_type == SERVERLESS_HTTP_API)
            .collect();
        ensure!(
            apis.len() <= 1,
            "more than one {SERVERLESS_HTTP_API} is not supported"
        );
        Ok(apis
            .first()
            .and_then(|(_, r)| r.properties.get("Auth"))
            .and_then(|auth| auth.get("DefaultAuthorizer"))
            .and_then(Value::as_str)
            .map(str::to_owned))
    }

    /// A function property, else its `Globals: Function:` default.
    fn with_global<'a>(&'a self, props: &'a Mapping, key: &str) -> Option<&'a Value> {
        props.get(key).or_else(|| self.globals_function.get(key))
    }

    fn function(
        &self,
        id: &str,
        props: &Mapping,
        ctx: &ResolveContext,
        template_dir: &Path,
        default_protected: bool,
    ) -> anyhow::Result<FunctionSpec> {
        let r = Resolver {
            template: self,
            ctx,
        };
        let code_uri = r.string(
            props
                .get("CodeUri")
                .ok_or_else(|| anyhow!("missing CodeUri"))?,
        )?;
        let metadata = self.resources[id].metadata.as_ref();
        let build_method = metadata
            .and_then(|m| m.get("BuildMethod"))
            .and_then(Value::as_str);
        ensure!(
            build_method == Some("rust-cargolambda"),
            "Metadata.BuildMethod must be rust-cargolambda, found {build_method:?}"
        );
        let binary = match metadata
            .and_then(|m| m.get("BuildProperties"))
            .and_then(|b| b.get("Binary"))
        {
            Some(v) => r.string(v)?,
            None => package_name(&template_dir.join(&code_uri))?,
        };
        let timeout_secs = match self.with_global(props, "Timeout") {
            Some(v) => r.unsigned(v).context("Timeout")?,
            None => 3,
        };
        let memory_mb = match self.with_global(props, "MemorySize") {
            Some(v) => r.unsigned(v).context("MemorySize")?,
            None => 128,
        };
        let mut environment = BTreeMap::new();
        for source in [
            self.globals_function.get("Environment"),
            props.get("Environment"),
        ] {
            if let Some(vars) = source
                .and_then(|e| e.get("Variables"))
                .and_then(Value::as_mapping)
            {
                for (k, v) in vars {
                    let k = k
                        .as_str()
                        .ok_or_else(|| anyhow!("Environment: non-string name"))?;
                    environment.insert(
                        k.to_owned(),
                        r.string(v).with_context(|| format!("Environment {k}"))?,
                    );
                }
            }
        }
        let mut events = Vec::new();
        if let Some(map) = props.get("Events").and_then(Value::as_mapping) {
            for (name, event) in map {
                let name = name
                    .as_str()
                    .ok_or_else(|| anyhow!("Events: non-string name"))?;
                events.push(
                    event_spec(&r, name, event, default_protected)
                        .with_context(|| format!("event {name}"))?,
                );
            }
        }
        Ok(FunctionSpec {
            logical_id: id.to_owned(),
            code_uri,
            binary,
            timeout_secs,
            memory_mb,
            environment,
            events,
        })
    }
}

fn event_spec(
    r: &Resolver<'_>,
    name: &str,
    event: &Value,
    default_protected: bool,
) -> anyhow::Result<EventSpec> {
    let ty = event
        .get("Type")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("missing Type"))?;
    let empty = Value::Mapping(Mapping::new());
    let props = event.get("Properties").unwrap_or(&empty);
    let opt_u32 = |key: &str| -> anyhow::Result<Option<u32>> {
        props
            .get(key)
            .map(|v| r.unsigned(v).with_context(|| key.to_owned()))
            .transpose()
    };
    let enabled = match props.get("Enabled") {
        Some(v) => r.boolean(v)?,
        None => true,
    };
    Ok(match ty {
        "HttpApi" => {
            let method = r
                .string(
                    props
                        .get("Method")
                        .ok_or_else(|| anyhow!("missing Method"))?,
                )?
                .to_uppercase();
            let path = r.string(props.get("Path").ok_or_else(|| anyhow!("missing Path"))?)?;
            ensure!(path.starts_with('/'), "Path must start with /");
            let authorizer = props
                .get("Auth")
                .and_then(|a| a.get("Authorizer"))
                .map(|v| r.string(v))
                .transpose()?;
            let protected = match authorizer.as_deref() {
                Some("NONE") => false,
                Some(_) => true,
                None => default_protected,
            };
            EventSpec::HttpApi {
                name: name.to_owned(),
                method: if method == "X-AMAZON-APIGATEWAY-ANY-METHOD" {
                    "ANY".into()
                } else {
                    method
                },
                path,
                protected,
            }
        }
        "SQS" => {
            let queue = props.get("Queue").ok_or_else(|| anyhow!("missing Queue"))?;
            let queue = match intrinsic(queue) {
                Some(Intrinsic::GetAtt(arg)) => {
                    let (id, attr) = get_att_target(arg)?;
                    ensure!(attr == "Arn", "Queue: expected !GetAtt {id}.Arn");
                    id
                }
                _ => bail!("Queue: expected !GetAtt <queue>.Arn of a queue in this template"),
            };
            let response_types: Vec<String> = match props.get("FunctionResponseTypes") {
                Some(Value::Sequence(items)) => items
                    .iter()
                    .map(|v| r.string(v))
                    .collect::<anyhow::Result<_>>()?,
                Some(_) => bail!("FunctionResponseTypes must be a list"),
                None => vec![],
            };
            EventSpec::Sqs {
                name: name.to_owned(),
                queue,
                batch_size: opt_u32("BatchSize")?.unwrap_or(10),
                batching_window_secs: opt_u32("MaximumBatchingWindowInSeconds")?.unwrap_or(0),
                report_batch_item_failures: response_types
                    .iter()
                    .any(|t| t == "ReportBatchItemFailures"),
                max_concurrency: props
                    .get("ScalingConfig")
                    .and_then(|s| s.get("MaximumConcurrency"))
                    .map(|v| r.unsigned(v))
                    .transpose()?,
                enabled,
            }
        }
        "Schedule" | "ScheduleV2" => {
            let key = if ty == "Schedule" {
                "Schedule"
            } else {
                "ScheduleExpression"
            };
            let expression = r.string(props.get(key).ok_or_else(|| anyhow!("missing {key}"))?)?;
            let enabled = match props.get("State") {
                Some(v) => r.string(v)? == "ENABLED",
                None => enabled,
            };
            let input = props
                .get("Input")
                .map(|v| -> anyhow::Result<serde_json::Value> {
                    serde_json::from_str(&r.string(v)?).context("Input must be a JSON string")
                })
                .transpose()?;
            EventSpec::Schedule {
                name: name.to_owned(),
                expression,
                enabled,
                input,
            }
        }
        other => bail!("event type {other} is not supported by the local runtime"),
    })
}

/// `[package] name` of the crate at `dir`.
fn package_name(dir: &Path) -> anyhow::Result<String> {
    let manifest: PathBuf = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some(value) = line
                .strip_prefix("name")
                .map(str::trim)
                .and_then(|l| l.strip_prefix('='))
        {
            return Ok(value.trim().trim_matches('"').to_owned());
        }
    }
    bail!("{} has no [package] name", manifest.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ResolveContext {
        let mut ctx = ResolveContext::new("stack", "eu-central-1", "123456789012");
        ctx.deployed.insert(
            "WorkQueue".into(),
            super::super::DeployedResource {
                reference: "http://127.0.0.1:4566/123456789012/stack-work".into(),
                attributes: BTreeMap::from([(
                    "Arn".into(),
                    "arn:aws:sqs:eu-central-1:123456789012:stack-work".into(),
                )]),
            },
        );
        ctx
    }

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    #[test]
    fn the_product_template_functions() {
        let template = Template::load(root().join("template.yaml")).unwrap();
        let mut ctx = ResolveContext::new("stack", "eu-central-1", "123456789012");
        ctx.parameters
            .extend(crate::local_runtime::app::local_parameters());
        let provisioned = crate::provision::stand_in(&template, &ctx).unwrap();
        ctx.deployed = provisioned.deployed(&ctx.region, &ctx.account_id);
        let functions = template.functions(&ctx, &root()).unwrap();
        let public = functions
            .iter()
            .find(|f| f.logical_id == "ApiPublicFunction")
            .unwrap();
        assert_eq!(public.binary, "api-public");
        assert_eq!(public.timeout_secs, 30, "Timeout comes from Globals");
        assert!(public.events.iter().all(|e| matches!(
            e,
            EventSpec::HttpApi {
                protected: false,
                ..
            }
        )));
        assert!(
            public
                .events
                .iter()
                .any(|e| matches!(e, EventSpec::HttpApi { path, .. } if path == "/v1/banks"))
        );
        let connections = functions
            .iter()
            .find(|f| f.logical_id == "ApiConnectionsFunction")
            .unwrap();
        assert_eq!(connections.environment["CONSENTS_TABLE"], "stack-consents");
        assert_eq!(
            connections.environment["CALLBACK_URL"],
            "http://127.0.0.1:3000/v1/callbacks/sca"
        );
    }

    #[test]
    fn events_of_every_kind() {
        let dir = root().join("tests/fixtures");
        let template = Template::load(dir.join("runtime-template.yaml")).unwrap();
        // CodeUri is relative to the template; BuildProperties.Binary names the binary.
        let functions = template.functions(&ctx(), &root().join("tests")).unwrap();
        let by_id = |id: &str| {
            functions
                .iter()
                .find(|f| f.logical_id == id)
                .unwrap()
                .clone()
        };

        let echo = by_id("EchoFunction");
        assert_eq!(echo.binary, "fixture-echo");
        assert_eq!(echo.timeout_secs, 5);
        assert_eq!(echo.environment["ECHO_NAME"], "echo");
        assert_eq!(
            echo.environment["FIXTURE_QUEUE_URL"],
            "http://127.0.0.1:4566/123456789012/stack-work"
        );
        let routes: Vec<_> = echo
            .events
            .iter()
            .map(|e| match e {
                EventSpec::HttpApi {
                    method,
                    path,
                    protected,
                    ..
                } => (method.as_str(), path.as_str(), *protected),
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(
            routes.contains(&("GET", "/v1/me", true)),
            "default authorizer applies"
        );
        assert!(routes.contains(&("ANY", "/v1/items/{id}", true)));
        assert!(routes.contains(&("GET", "/teapot", false)));

        let worker = by_id("WorkerFunction");
        assert_eq!(worker.timeout_secs, 10);
        assert_eq!(
            worker.events,
            vec![EventSpec::Sqs {
                name: "Work".into(),
                queue: "WorkQueue".into(),
                batch_size: 5,
                batching_window_secs: 1,
                report_batch_item_failures: true,
                max_concurrency: Some(2),
                enabled: true,
            }]
        );

        let tick = by_id("TickFunction");
        assert!(tick.events.contains(&EventSpec::Schedule {
            name: "Daily".into(),
            expression: "cron(0 9 * * ? *)".into(),
            enabled: true,
            input: Some(serde_json::json!({"job": "daily"})),
        }));
        assert!(tick.events.iter().any(
            |e| matches!(e, EventSpec::Schedule { name, enabled: false, .. } if name == "Hourly")
        ));
    }

    #[test]
    fn unresolvable_environment_is_an_error() {
        let template = Template::load(root().join("tests/fixtures/runtime-template.yaml")).unwrap();
        let bare = ResolveContext::new("stack", "eu-central-1", "123456789012");
        let err = template
            .functions(&bare, &root().join("tests"))
            .unwrap_err();
        assert!(format!("{err:#}").contains("WorkQueue"), "{err:#}");
    }
}
