//! `wxrefund-local`: the whole product on one machine. The WeChat Pay sandbox (or another WeChat
//! endpoint), the embedded redb ledger, every HTTP route of the Lambda functions plus
//! `GET /openapi.json`, and the poller, in one process on 127.0.0.1.
//!
//! Killing it at any moment loses nothing: a refund is committed to the ledger (durably) before
//! WeChat is called, and on the next start the poller finishes whatever was in flight.
//!
//! `wxrefund-local bench` builds the same stack (`wxrefund_local::stack`) and load-tests it
//! (`wxrefund_local::bench`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use wxpay_sandbox::RunningSandbox;
use wxrefund::state::UnixMillis;
use wxrefund_local::bench::{self, BenchArgs};
use wxrefund_local::stack::{BoxError, ExternalWxPay, Stack, StackConfig, parse_duration};

#[derive(Parser, Debug)]
#[command(
    name = "wxrefund-local",
    version,
    // The run's flags configure the stack the run starts; bench has its own.
    args_conflicts_with_subcommands = true,
    about = "wxrefund on one machine: WeChat Pay sandbox + embedded ledger + HTTP API + poller",
    long_about = "Runs the refund API (the same routes as the Lambda functions, plus GET /openapi.json), \
the poller and, unless --wxpay-base-url is given, an in-process WeChat Pay v2 sandbox. \
State lives in --data-dir: ledger.redb (durable; kill -9 loses nothing) and sandbox/ \
(certificates, merchant.json and the sandbox's books.json, written before each reply). \
`wxrefund-local bench` runs a load test against the same stack instead."
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address of the refund API (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Address of the built-in WeChat Pay sandbox (HTTPS).
    #[arg(long, default_value = "127.0.0.1:3001")]
    sandbox_listen: SocketAddr,
    /// Where the ledger (ledger.redb) and the sandbox's files (sandbox/) live.
    #[arg(long, default_value = "./.wxrefund")]
    data_dir: PathBuf,
    /// How long sandbox refunds stay PROCESSING, e.g. 2s, 500ms, 1m.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    settle_after: Duration,
    /// How often the poller drives due refunds, e.g. 2s, 500ms.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    poll_every: Duration,
    /// Use this WeChat Pay endpoint instead of the built-in sandbox (no sandbox is started).
    #[arg(long, requires = "secret_file")]
    wxpay_base_url: Option<String>,
    /// The merchant secret JSON (appid, mch_id, api_v2_key, certificate) for --wxpay-base-url.
    #[arg(long, requires = "wxpay_base_url")]
    secret_file: Option<PathBuf>,
    /// An extra trusted root CA (PEM) for --wxpay-base-url, e.g. a separately run sandbox's ca.pem.
    #[arg(long, requires = "wxpay_base_url")]
    ca_file: Option<PathBuf>,
    /// notify_url sent with every refund [default: http://<listen>/wxpay/refund-notify].
    #[arg(long)]
    notify_url: Option<String>,
    /// Flag a refund `needs_person` once it is this old and still not final, whatever its status
    /// (for trying escalation out) [default: production's ages per status].
    #[arg(long, value_parser = parse_duration)]
    escalate_after: Option<Duration>,
    /// Also POST every merchant event (they are always appended to <data-dir>/events.jsonl) to
    /// this URL, signed in the `Wxrefund-Signature` header.
    #[arg(long)]
    webhook_url: Option<String>,
    /// The HMAC-SHA256 key of the webhook's signature.
    #[arg(long, default_value = wxrefund_local::stack::DEFAULT_WEBHOOK_SECRET, requires = "webhook_url")]
    webhook_secret: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load test: the whole stack in-process on free ports, refunds over real HTTP at a paced
    /// rate, latency and throughput, then the sandbox's books checked against the ledger.
    Bench(BenchArgs),
}

impl Args {
    fn stack_config(&self) -> StackConfig {
        let external = match (&self.wxpay_base_url, &self.secret_file) {
            (Some(url), Some(secret)) => Some(ExternalWxPay {
                base_url: url.clone(),
                secret_file: secret.clone(),
                ca_file: self.ca_file.clone(),
            }),
            // clap's `requires` makes one without the other impossible.
            _ => None,
        };
        StackConfig {
            settle_after: self.settle_after,
            poll_every: self.poll_every,
            external,
            notify_url: self.notify_url.clone(),
            escalate_after: self.escalate_after,
            webhook_url: self.webhook_url.clone(),
            webhook_secret: self.webhook_secret.clone(),
            ..StackConfig::new(self.listen, self.sandbox_listen, self.data_dir.clone())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No Ctrl-C handler available: rely on SIGTERM (or SIGKILL) only.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn banner(
    api: SocketAddr,
    sandbox: Option<(&RunningSandbox, &Path)>,
    wxpay_base_url: &str,
    ledger: &Path,
    notify_url: &str,
    poll_every: Duration,
) -> String {
    let api = format!("http://{api}");
    // A tag per start, so the walk-through can be pasted again after a restart without meeting
    // numbers the ledger already holds.
    let tag = UnixMillis::now().get() / 1000;
    let order = format!("order-{tag}");
    let refund = format!("refund-{tag}-1");
    let mut s = String::new();
    s.push_str("\nwxrefund-local is running (Ctrl-C to stop)\n");
    s.push_str(&format!(
        "  refund API  {api}   (OpenAPI 3: {api}/openapi.json)\n"
    ));
    match sandbox {
        Some((sb, ca)) => s.push_str(&format!(
            "  sandbox     {}  (WeChat Pay v2 stand-in, HTTPS with its own CA {}; admin API under /sandbox/; books in sandbox/books.json)\n",
            sb.base_url(),
            ca.display()
        )),
        None => s.push_str(&format!("  WeChat Pay  {wxpay_base_url}\n")),
    }
    s.push_str(&format!("  ledger      {}\n", ledger.display()));
    s.push_str(&format!(
        "  notify_url  {notify_url}; poller every {poll_every:?}\n"
    ));
    s.push_str("\nTry it:\n");
    if let Some((sb, ca)) = sandbox {
        let sbu = sb.base_url();
        let ca = ca.display();
        s.push_str(&format!(
            "  # 1. a paid order in the sandbox (1000 fen = 10.00 CNY)\n  \
             curl --cacert {ca} -X POST {sbu}/sandbox/orders \\\n    \
             -d '{{\"out_trade_no\":\"{order}\",\"total_fee\":1000}}'\n"
        ));
    } else {
        s.push_str(&format!(
            "  # 1. refunds need a paid order at {wxpay_base_url}; use its number below\n"
        ));
    }
    s.push_str(&format!(
        "  # 2. refund 300 fen of it (202 Accepted, status PROCESSING)\n  \
         curl -X POST {api}/refunds -H 'content-type: application/json' \\\n    \
         -d '{{\"out_refund_no\":\"{refund}\",\"out_trade_no\":\"{order}\",\"total_fee\":1000,\"refund_fee\":300}}'\n"
    ));
    s.push_str(&format!(
        "  # 3. watch it become SUCCESS (notification or poller); ?refresh=true asks WeChat now\n  \
         curl {api}/refunds/{refund}\n  \
         curl '{api}/refunds/{refund}?refresh=true'\n"
    ));
    s.push_str(&format!(
        "  # 4. every refund of the order (WeChat's list merged with the ledger)\n  \
         curl {api}/orders/{order}/refunds\n"
    ));
    if let Some((sb, ca)) = sandbox {
        s.push_str(&format!(
            "  # 5. the sandbox's books for the order\n  \
             curl --cacert {} {}/sandbox/orders/{order}\n",
            ca.display(),
            sb.base_url()
        ));
    }
    s
}

async fn run(args: Args) -> Result<(), BoxError> {
    let stack = Stack::start(&args.stack_config()).await?;
    println!(
        "{}",
        banner(
            stack.api_addr,
            stack.sandbox.as_ref().map(|(sb, ca)| (sb, ca.as_path())),
            &stack.wxpay_base_url,
            &stack.ledger_path,
            &stack.notify_url,
            stack.poll_every,
        )
    );
    stack.serve(shutdown_signal()).await
}

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = Args::parse();
    match args.command.take() {
        Some(Command::Bench(b)) => {
            bench::init_tracing();
            bench::main(b).await
        }
        None => {
            wxrefund::runtime::init_tracing();
            match run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("wxrefund-local: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_external_endpoint_needs_a_secret() {
        let a = Args::try_parse_from(["wxrefund-local"]).expect("defaults");
        assert_eq!(a.listen.to_string(), "127.0.0.1:3000");
        assert_eq!(a.sandbox_listen.to_string(), "127.0.0.1:3001");
        assert_eq!(a.poll_every, Duration::from_secs(2));
        assert_eq!(a.settle_after, Duration::from_secs(2));
        assert!(Args::try_parse_from(["wxrefund-local", "--wxpay-base-url", "https://x"]).is_err());
        assert!(Args::try_parse_from(["wxrefund-local", "--ca-file", "ca.pem"]).is_err());
        assert!(
            Args::try_parse_from([
                "wxrefund-local",
                "--wxpay-base-url",
                "https://x",
                "--secret-file",
                "m.json"
            ])
            .is_ok()
        );
    }

    #[test]
    fn bench_is_a_subcommand_and_no_subcommand_runs_the_stack() {
        let a = Args::try_parse_from(["wxrefund-local"]).expect("defaults");
        assert!(a.command.is_none());
        let a = Args::try_parse_from(["wxrefund-local", "bench", "--refunds", "10", "--rate", "5"])
            .expect("bench");
        match a.command {
            Some(Command::Bench(b)) => {
                assert_eq!(b.refunds, 10);
                assert_eq!(b.rate, 5.0);
            }
            None => panic!("bench expected"),
        }
    }
}
