//! CheckPermission under load, against its ceiling.
//!
//! Runs, on this machine and under the same load, (a) a bare tonic server whose
//! CheckPermission handler is one HashSet lookup (no auth, no database) — the
//! ceiling — and (b) the real `partnerhub` binary with authentication on and
//! 100,000 granted numbers. Each is its own process; the load generator (this
//! process) keeps C calls in flight over N connections for a fixed time after a
//! warm-up, records every latency in an HDR histogram, and reports rps,
//! p50/p99/p999 and Partner Hub's ratios to the ceiling.
//!
//!     cargo bench -p partnerhub-tests --bench check_permission
//!
//! Environment: BENCH_SECONDS (measured, default 5), BENCH_WARMUP_SECONDS
//! (default 2), BENCH_GRANTS (default 100000), BENCH_SERVER_CPUS (e.g. `1`:
//! pin both servers to those CPUs with taskset; then run the bench itself
//! under `taskset -c 0`). Writes target/bench-reports/check_permission.txt.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is right

use std::{
    collections::HashSet,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use base64::Engine as _;
use hdrhistogram::Histogram;
use partnerhub_proto::permissions::v1::{
    self as perm, permissions_service_client::PermissionsServiceClient, permissions_service_server::PermissionsService,
};
use partnerhub_runtime::auth::{BearerToken, Subject, TokenKeys};
use partnerhub_tests::binary::{ServerProcess, run_cli};
use sea_orm::{ConnectionTrait, Database};
use tokio::time::Instant;
use tonic::{Request, Response, Status, service::interceptor::InterceptedService, transport::Channel};

const PARTNER: &str = "partner-bench";

fn number(index: usize) -> String {
    format!("+49{index:010}")
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
}

/// The ceiling: CheckPermission as one HashSet lookup.
struct BareServer {
    granted: HashSet<(String, String)>,
}

#[tonic::async_trait]
impl PermissionsService for BareServer {
    async fn check_permission(
        &self,
        request: Request<perm::CheckPermissionRequest>,
    ) -> Result<Response<perm::CheckPermissionResponse>, Status> {
        let r = request.into_inner();
        let allowed = self.granted.contains(&(r.partner_id, r.phone_number));
        Ok(Response::new(perm::CheckPermissionResponse { allowed }))
    }

    async fn set_partner_permissions(
        &self,
        _: Request<perm::SetPartnerPermissionsRequest>,
    ) -> Result<Response<perm::SetPartnerPermissionsResponse>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn list_partner_permissions(
        &self,
        _: Request<perm::ListPartnerPermissionsRequest>,
    ) -> Result<Response<perm::ListPartnerPermissionsResponse>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn revoke_partner_permissions(
        &self,
        _: Request<perm::RevokePartnerPermissionsRequest>,
    ) -> Result<Response<perm::RevokePartnerPermissionsResponse>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn grant_partner_permissions(
        &self,
        _: Request<perm::GrantPartnerPermissionsRequest>,
    ) -> Result<Response<perm::GrantPartnerPermissionsResponse>, Status> {
        Err(Status::unimplemented("bare server"))
    }
}

/// `--bare-server N`: serve the ceiling with N grants, print the address, run until killed.
async fn serve_bare(grants: usize) {
    let granted = (0..grants).map(|index| (PARTNER.to_owned(), number(index))).collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening {}", listener.local_addr().unwrap());
    tonic::transport::Server::builder()
        .add_service(perm::permissions_service_server::PermissionsServiceServer::new(BareServer { granted }))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .unwrap();
}

fn pin(pid: u32) {
    if let Ok(cpus) = std::env::var("BENCH_SERVER_CPUS") {
        let status =
            Command::new("taskset").args(["-a", "-p", "-c", &cpus, &pid.to_string()]).stdout(Stdio::null()).status();
        assert!(status.is_ok_and(|status| status.success()), "taskset failed (is util-linux installed?)");
    }
}

#[derive(Debug, Clone, Copy)]
struct Load {
    connections: usize,
    in_flight: usize,
}

struct Measured {
    rps: f64,
    latency: Histogram<u64>,
}

/// Keeps `load.in_flight` calls going over `load.connections` connections: a
/// warm-up, then `seconds` measured.
async fn run_load(
    addr: SocketAddr,
    token: Option<&str>,
    load: Load,
    warmup: Duration,
    seconds: Duration,
    grants: usize,
) -> Measured {
    let mut channels = Vec::new();
    for _ in 0..load.connections {
        channels.push(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap());
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let stop = measure_from + seconds;
    let mut tasks = Vec::new();
    for task in 0..load.in_flight {
        let channel = channels[task % load.connections].clone();
        let credentials = BearerToken::new(token.unwrap_or("none")).unwrap();
        let with_token = token.is_some();
        tasks.push(tokio::spawn(async move {
            let mut client =
                PermissionsServiceClient::new(InterceptedService::new(channel, move |request: Request<()>| {
                    if with_token {
                        tonic::service::Interceptor::call(&mut credentials.clone(), request)
                    } else {
                        Ok(request)
                    }
                }));
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
            let mut calls = 0u64;
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (task as u64 + 1);
            loop {
                let now = Instant::now();
                if now >= stop {
                    break;
                }
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let request = perm::CheckPermissionRequest {
                    partner_id: PARTNER.to_owned(),
                    phone_number: number((seed % grants as u64) as usize),
                };
                let sent = Instant::now();
                let response = client.check_permission(request).await.unwrap().into_inner();
                assert!(response.allowed, "every number the load asks about is granted");
                if sent >= measure_from {
                    histogram.record(sent.elapsed().as_micros().max(1) as u64).unwrap();
                    calls += 1;
                }
            }
            (calls, histogram)
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    let mut calls = 0;
    for task in tasks {
        let (task_calls, histogram) = task.await.unwrap();
        calls += task_calls;
        latency.add(histogram).unwrap();
    }
    Measured { rps: calls as f64 / seconds.as_secs_f64(), latency }
}

fn micros(histogram: &Histogram<u64>, quantile: f64) -> String {
    format!("{:.2} ms", histogram.value_at_quantile(quantile) as f64 / 1000.0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let grants = env_number("BENCH_GRANTS", 100_000) as usize;
    if let Some(index) = args.iter().position(|arg| arg == "--bare-server") {
        let grants = args.get(index + 1).and_then(|value| value.parse().ok()).unwrap_or(grants);
        serve_bare(grants).await;
        return;
    }
    let seconds = Duration::from_secs(env_number("BENCH_SECONDS", 5));
    let warmup = Duration::from_secs(env_number("BENCH_WARMUP_SECONDS", 2));

    // Partner Hub on its embedded database, with the grants written straight in.
    let data_dir = std::env::temp_dir().join(format!("partnerhub-bench-{}", std::process::id()));
    std::fs::create_dir_all(&data_dir).unwrap();
    run_cli(&data_dir, &["migrate"]);
    let db =
        Database::connect(format!("sqlite://{}?mode=rwc", data_dir.join("partnerhub.db").display())).await.unwrap();
    for chunk in (0..grants).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|index| format!("('{PARTNER}', '{}', 'client-bench', '2026-01-01T00:00:00Z')", number(*index)))
            .collect();
        db.execute_unprepared(&format!(
            "INSERT INTO permission_grants (partner_id, phone_number, client_id, grant_time) VALUES {}",
            values.join(",")
        ))
        .await
        .unwrap();
    }
    db.close().await.unwrap();
    let secret = [9u8; 32];
    let key = base64::engine::general_purpose::STANDARD.encode(secret);
    let partnerhub = ServerProcess::start_with(
        &data_dir,
        &[],
        &[("PARTNERHUB__AUTH__SIGNING_KEY", key.as_str()), ("RUST_LOG", "warn,partnerhub::app=info")],
    );
    pin(partnerhub.pid());
    let token = TokenKeys::from_secret(&secret, "partnerhub")
        .mint(&"service:messaging".parse::<Subject>().unwrap(), Duration::from_secs(3600))
        .unwrap();

    // The ceiling, in a process of its own.
    let mut bare = Command::new(std::env::current_exe().unwrap())
        .args(["--bare-server", &grants.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    pin(bare.id());
    let mut line = String::new();
    BufReader::new(bare.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let bare_addr: SocketAddr = line.trim().strip_prefix("listening ").unwrap().parse().unwrap();

    let loads = [
        Load { connections: 1, in_flight: 16 },
        Load { connections: 1, in_flight: 64 },
        Load { connections: 4, in_flight: 16 },
        Load { connections: 4, in_flight: 64 },
    ];
    let mut report = format!(
        "CheckPermission vs a bare tonic HashSet server ({grants} grants; {seconds:?} measured after {warmup:?} warm-up; \
         servers pinned: {})\n\n\
         {:<18} {:>10} {:>10} {:>10} {:>10}   {:>10} {:>10} {:>10} {:>10}   {:>9} {:>9}\n",
        std::env::var("BENCH_SERVER_CPUS").unwrap_or_else(|_| "no".into()),
        "connections×calls",
        "bare rps",
        "p50",
        "p99",
        "p999",
        "hub rps",
        "p50",
        "p99",
        "p999",
        "rps ratio",
        "p99 ratio"
    );
    print!("{report}");
    for load in loads {
        let ceiling = run_load(bare_addr, None, load, warmup, seconds, grants).await;
        let hub = run_load(partnerhub.addr, Some(&token), load, warmup, seconds, grants).await;
        let line = format!(
            "{:<18} {:>10.0} {:>10} {:>10} {:>10}   {:>10.0} {:>10} {:>10} {:>10}   {:>9.2} {:>9.2}\n",
            format!("{} × {}", load.connections, load.in_flight),
            ceiling.rps,
            micros(&ceiling.latency, 0.5),
            micros(&ceiling.latency, 0.99),
            micros(&ceiling.latency, 0.999),
            hub.rps,
            micros(&hub.latency, 0.5),
            micros(&hub.latency, 0.99),
            micros(&hub.latency, 0.999),
            hub.rps / ceiling.rps,
            hub.latency.value_at_quantile(0.99) as f64 / ceiling.latency.value_at_quantile(0.99) as f64,
        );
        print!("{line}");
        report.push_str(&line);
    }
    report.push_str("\ntargets: rps ratio >= 0.70, p99 ratio <= 1.50\n");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-reports");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("check_permission.txt"), &report).unwrap();
    let _ = bare.kill();
    let _ = bare.wait();
    drop(partnerhub);
    let _ = std::fs::remove_dir_all(&data_dir);
}
