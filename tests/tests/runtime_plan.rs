//! template.yaml and the local runtime must agree: every HTTP route, queue mapping and
//! schedule wired in the template (read here independently, as plain YAML) is in the
//! runtime's plan, and nothing else is; every function names a binary of the workspace.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use infra::local_runtime::app::RuntimePlan;
use infra::template::{ResolveContext, Template};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What the template wires, by a plain walk over the YAML (not the runtime's parser).
#[derive(Default, Debug)]
struct Wiring {
    routes: BTreeSet<(String, String, String)>,
    queues: BTreeSet<(String, String)>,
    schedules: BTreeSet<(String, String)>,
    functions: BTreeSet<String>,
}

fn wiring(path: &Path) -> Wiring {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut w = Wiring::default();
    for (id, resource) in doc["Resources"].as_mapping().unwrap() {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let id = id.as_str().unwrap().to_owned();
        w.functions.insert(id.clone());
        let Some(events) = resource["Properties"]["Events"].as_mapping() else {
            continue;
        };
        for (name, event) in events {
            let props = &event["Properties"];
            match event["Type"].as_str().unwrap() {
                "HttpApi" => {
                    w.routes.insert((
                        props["Method"].as_str().unwrap().to_uppercase(),
                        props["Path"].as_str().unwrap().to_owned(),
                        id.clone(),
                    ));
                }
                "SQS" => {
                    let serde_yaml::Value::Tagged(tag) = &props["Queue"] else {
                        panic!("Queue of {id}.{name:?} is not !GetAtt")
                    };
                    let target = tag
                        .value
                        .as_str()
                        .unwrap()
                        .trim_end_matches(".Arn")
                        .to_owned();
                    w.queues.insert((target, id.clone()));
                }
                "Schedule" | "ScheduleV2" => {
                    w.schedules
                        .insert((format!("{id}.{}", name.as_str().unwrap()), id.clone()));
                }
                other => panic!(
                    "{id}: event type {other} is wired in the template; the runtime must support it"
                ),
            }
        }
    }
    w
}

/// The plan against stand-in resource names (no AWS needed for this check).
fn plan(template_path: &Path) -> RuntimePlan {
    let template = Template::load(template_path).unwrap();
    let mut ctx = ResolveContext::new("check", "eu-central-1", "123456789012");
    ctx.parameters
        .extend(infra::local_runtime::app::local_parameters());
    let provisioned = infra::provision::stand_in(&template, &ctx).unwrap();
    ctx.deployed = provisioned.deployed(&ctx.region, &ctx.account_id);
    RuntimePlan::build(
        &template,
        template_path,
        &ctx,
        &provisioned,
        &root().join("target/debug"),
    )
    .unwrap()
}

fn check(template_path: &Path) {
    let wired = wiring(template_path);
    let plan = plan(template_path);
    let planned_routes: BTreeSet<_> = plan
        .routes
        .iter()
        .map(|r| (r.method.clone(), r.path.clone(), r.function.clone()))
        .collect();
    assert_eq!(planned_routes, wired.routes, "routes of {template_path:?}");
    let planned_queues: BTreeSet<_> = plan
        .queues
        .iter()
        .map(|q| (q.queue.clone(), q.function.clone()))
        .collect();
    assert_eq!(
        planned_queues, wired.queues,
        "queue mappings of {template_path:?}"
    );
    let planned_schedules: BTreeSet<_> = plan
        .schedules
        .iter()
        .map(|s| (s.name.clone(), s.function.clone()))
        .collect();
    assert_eq!(
        planned_schedules, wired.schedules,
        "schedules of {template_path:?}"
    );
    let planned_functions: BTreeSet<_> = plan.functions.iter().map(|f| f.name.clone()).collect();
    assert_eq!(planned_functions, wired.functions);
}

#[test]
fn the_product_template_and_the_runtime_agree() {
    check(&root().join("template.yaml"));
}

#[test]
fn the_fixture_template_and_the_runtime_agree() {
    check(&root().join("tests/fixtures/runtime-template.yaml"));
}

#[test]
fn every_function_is_a_workspace_binary() {
    let template_path = root().join("template.yaml");
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&template_path).unwrap()).unwrap();
    for f in plan(&template_path).functions {
        let code_uri = doc["Resources"][f.name.as_str()]["Properties"]["CodeUri"]
            .as_str()
            .unwrap();
        let krate = root().join(code_uri);
        let binary = f.binary.file_name().unwrap().to_str().unwrap();
        let main = krate.join("src/main.rs");
        let named = krate.join(format!("src/bin/{binary}.rs"));
        assert!(
            main.is_file() || named.is_file(),
            "{}: no binary {binary} in {}",
            f.name,
            krate.display()
        );
        let members = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
        assert!(
            members.contains("\"functions/*\"") && code_uri.starts_with("functions/"),
            "{}: CodeUri {code_uri} is not a workspace function crate",
            f.name
        );
    }
}

/// docs/openapi.yaml describes exactly the routes template.yaml deploys, with the same
/// protection (a route without `security: []` needs the bearer token).
#[test]
fn the_openapi_file_lists_exactly_the_template_routes() {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(root().join("docs/openapi.yaml")).unwrap())
            .unwrap();
    let global_secured = doc["security"].as_sequence().is_some_and(|s| !s.is_empty());
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_mapping().unwrap() {
        for (method, op) in item.as_mapping().unwrap() {
            let method = method.as_str().unwrap();
            if !["get", "put", "post", "delete", "patch", "head", "options"].contains(&method) {
                continue;
            }
            let secured = match op.get("security") {
                Some(s) => s.as_sequence().is_some_and(|s| !s.is_empty()),
                None => global_secured,
            };
            documented.insert((
                method.to_uppercase(),
                path.as_str().unwrap().to_owned(),
                secured,
            ));
        }
    }
    let deployed: BTreeSet<_> = plan(&root().join("template.yaml"))
        .routes
        .into_iter()
        .map(|r| (r.method, r.path, r.protected))
        .collect();
    assert_eq!(
        documented, deployed,
        "docs/openapi.yaml vs template.yaml (method, path, needs token)"
    );
}
