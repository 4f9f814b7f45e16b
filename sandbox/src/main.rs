//! The `wxpay-sandbox` binary: starts the sandbox with flags (all optional) and runs until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use wxpay_sandbox::{Sandbox, SandboxConfig};

#[derive(Parser, Debug)]
#[command(
    name = "wxpay-sandbox",
    about = "A local WeChat Pay v2 refund server (HTTPS, mutual TLS on /secapi/)"
)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Where ca.pem, apiclient_cert.{p12,pem}, apiclient_key.pem, merchant.json and books.json live.
    #[arg(long, default_value = "./wxpay-sandbox-state")]
    state_dir: PathBuf,
    #[arg(long, default_value = wxpay_sandbox::DEFAULT_MCH_ID)]
    mch_id: String,
    #[arg(long, default_value = wxpay_sandbox::DEFAULT_APPID)]
    appid: String,
    /// The APIv2 key (32 ASCII letters/digits).
    #[arg(long, default_value = wxpay_sandbox::DEFAULT_API_KEY)]
    api_key: String,
    /// How long refunds stay PROCESSING, e.g. 3s, 500ms, 2m.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    settle_after: Duration,
    /// Divide WeChat's notification retry schedule (15s, 15s, 30s, 3m, ...) by this.
    #[arg(long, default_value_t = 1.0)]
    notify_retry_factor: f64,
    /// Default notify_url when neither the refund nor its order has one.
    #[arg(long)]
    notify_url: Option<String>,
    /// Refund apply requests per second.
    #[arg(long, default_value_t = 150)]
    apply_qps: u32,
    /// Failing requests per second before FREQUENCY_LIMITED.
    #[arg(long, default_value_t = 6)]
    failure_qps: u32,
    /// Discard the saved books (STATE_DIR/books.json) and start empty.
    #[arg(long)]
    fresh: bool,
    /// Keep the books in memory only (books.json is neither read nor written).
    #[arg(long, conflicts_with = "fresh")]
    no_persist: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 3s, 500ms or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = SandboxConfig {
        listen: args.listen,
        state_dir: args.state_dir,
        mch_id: args.mch_id,
        appid: args.appid,
        api_key: args.api_key,
        settle_after: args.settle_after,
        notify_retry_factor: args.notify_retry_factor,
        notify_url: args.notify_url,
        apply_qps: args.apply_qps,
        failure_qps: args.failure_qps,
        persist: !args.no_persist,
        fresh: args.fresh,
        ..SandboxConfig::default()
    };
    let sandbox = match Sandbox::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wxpay-sandbox: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("{}", sandbox.base_url());
    let f = sandbox.files();
    eprintln!(
        "wxpay-sandbox: mch_id {} appid {}; files in {} (ca.pem, apiclient_cert.p12 [password = mch_id], apiclient_cert.pem, apiclient_key.pem, merchant.json, books.json); admin API at {}/sandbox/",
        sandbox.merchant().mch_id,
        sandbox.merchant().appid,
        f.dir.display(),
        sandbox.base_url()
    );
    let _ = tokio::signal::ctrl_c().await;
    sandbox.stop().await;
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("4"), Ok(Duration::from_secs(4)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
