//! Provisions local AWS from template.yaml.
//!
//! ```text
//! provision          # JSON {stack_name, tables, queues} on stdout
//! provision --env    # CONSENTS_TABLE=... PAYMENT_STATUS_QUEUE_URL=... lines on stdout
//! ```
//!
//! The AWS SDK config comes only from the standard environment (AWS_ENDPOINT_URL,
//! AWS_REGION, AWS_ACCESS_KEY_ID, AWS_PROFILE, ...). The stack name is `STACK_NAME`
//! (default `openbank-local`), the template `TEMPLATE_PATH` (default: the repository's
//! template.yaml). Logs go to stderr (`RUST_LOG`).

use std::io::IsTerminal;
use std::process::ExitCode;

use aws_config::BehaviorVersion;
use infra::provision::{provision, template_path};
use infra::template::Template;

const DEFAULT_STACK_NAME: &str = "openbank-local";

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let mut env_format = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--env" => env_format = true,
            "-h" | "--help" => {
                println!("usage: provision [--env]   (env: STACK_NAME, TEMPLATE_PATH, AWS_*)");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("provision: unknown argument {other} (usage: provision [--env])");
                return ExitCode::from(2);
            }
        }
    }

    match run(env_format).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("provision: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(env_format: bool) -> anyhow::Result<()> {
    let stack_name = std::env::var("STACK_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_STACK_NAME.to_owned());
    let template = Template::load(template_path())?;
    let sdk = aws_config::load_defaults(BehaviorVersion::latest()).await;
    let provisioned = provision(&sdk, &template, &stack_name).await?;

    if env_format {
        for (key, value) in provisioned.env_vars() {
            println!("{key}={value}");
        }
    } else {
        println!("{}", serde_json::to_string_pretty(&provisioned)?);
    }
    Ok(())
}
