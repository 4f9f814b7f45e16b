//! The `wxpay-sandbox` binary: starts the sandbox with flags (all optional) and runs until Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use wxpay_sandbox::duration::parse_duration;
use wxpay_sandbox::{RetryFactor, Sandbox, SandboxConfig};

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
    /// Divide WeChat's notification retry schedule (15s, 15s, 30s, 3m, ...) by this (> 0).
    #[arg(long, default_value = "1", value_parser = parse_retry_factor)]
    notify_retry_factor: f64,
    /// Default notify_url when neither the refund nor its order has one.
    #[arg(long)]
    notify_url: Option<String>,
    /// Refund apply requests per second (at least 1).
    #[arg(long, default_value_t = 150, value_parser = clap::value_parser!(u32).range(1..))]
    apply_qps: u32,
    /// Failing requests per second before FREQUENCY_LIMITED (at least 1).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    failure_qps: u32,
    /// Discard the saved books (STATE_DIR/books.json) and start empty.
    #[arg(long)]
    fresh: bool,
    /// Keep the books in memory only (books.json is neither read nor written).
    #[arg(long, conflicts_with = "fresh")]
    no_persist: bool,
}

fn parse_retry_factor(s: &str) -> Result<f64, String> {
    let f: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    RetryFactor::new(f).map(RetryFactor::get)
}

/// `RUST_LOG` when set (a malformed one is an error, not silently `info`), else `info`.
fn log_filter() -> Result<tracing_subscriber::EnvFilter, String> {
    match std::env::var("RUST_LOG") {
        Err(std::env::VarError::NotPresent) => Ok(tracing_subscriber::EnvFilter::new("info")),
        Err(e) => Err(format!("RUST_LOG: {e}")),
        Ok(v) => {
            tracing_subscriber::EnvFilter::try_new(&v).map_err(|e| format!("RUST_LOG={v:?}: {e}"))
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = match log_filter() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("wxpay-sandbox: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt().with_env_filter(filter).init();
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
    fn zero_rates_and_bad_retry_factors_are_refused_by_the_flags() {
        // GIVEN the defaults THEN they parse
        let a = Args::try_parse_from(["wxpay-sandbox"]).unwrap();
        assert_eq!((a.apply_qps, a.failure_qps), (150, 6));
        assert_eq!(a.notify_retry_factor, 1.0);
        assert_eq!(a.settle_after, Duration::from_secs(3));
        // WHEN a rate is 0 or the factor is not a positive number THEN the flag is refused
        for bad in [
            ["--apply-qps", "0"],
            ["--failure-qps", "0"],
            ["--notify-retry-factor", "0"],
            ["--notify-retry-factor", "-2"],
            ["--notify-retry-factor", "inf"],
            ["--settle-after", "1d"],
        ] {
            let args = std::iter::once("wxpay-sandbox").chain(bad);
            assert!(Args::try_parse_from(args).is_err(), "{bad:?}");
        }
        let a = Args::try_parse_from(["wxpay-sandbox", "--notify-retry-factor", "1000"]).unwrap();
        assert_eq!(a.notify_retry_factor, 1000.0);
    }
}
