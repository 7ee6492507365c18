//! Prints a JWT accepted by the local runtime's HTTP API for a user.
//!
//! ```text
//! local-token alice                      # valid 12 hours
//! local-token alice --ttl-hours 1
//! local-token alice --audience my-api    # when the runtime checks an audience
//! ```
//!
//! The token (and nothing else) goes to stdout, so `TOKEN=$(cargo run -q -p infra --bin
//! local-token -- alice)` works. It is signed with `LOCAL_JWT_SECRET` (default
//! `local-dev-secret`), HS256, issuer `local`, `sub` = the user name.

use std::process::ExitCode;
use std::time::Duration;

use infra::local_runtime::jwt;

const USAGE: &str = "usage: local-token <user> [--ttl-hours N] [--audience AUD]   \
                     (env: LOCAL_JWT_SECRET, default local-dev-secret)";
const DEFAULT_TTL_HOURS: u64 = 12;

struct Args {
    user: String,
    ttl_hours: u64,
    audience: Option<String>,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut user = None;
    let mut ttl_hours = DEFAULT_TTL_HOURS;
    let mut audience = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--ttl-hours" => {
                let v = value("--ttl-hours")?;
                ttl_hours = v
                    .parse()
                    .ok()
                    .filter(|h| *h > 0)
                    .ok_or_else(|| format!("--ttl-hours: not a positive whole number: {v}"))?;
            }
            "--audience" | "--aud" => audience = Some(value("--audience")?),
            f if f.starts_with('-') => return Err(format!("unknown option {f}")),
            _ if user.is_some() => return Err(format!("unexpected argument {arg}")),
            _ if arg.trim().is_empty() => return Err("the user name is empty".to_owned()),
            _ => user = Some(arg),
        }
    }
    let user = user.ok_or_else(|| "missing user name".to_owned())?;
    Ok(Some(Args {
        user,
        ttl_hours,
        audience,
    }))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            eprintln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("local-token: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let ttl = Duration::from_secs(args.ttl_hours.saturating_mul(3600));
    let token = jwt::issue(
        &jwt::secret_from_env(),
        &args.user,
        ttl,
        args.audience.as_deref(),
    );
    println!("{token}");
    ExitCode::SUCCESS
}
