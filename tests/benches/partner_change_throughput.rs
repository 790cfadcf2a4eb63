//! How many partner changes per second complete end to end: submit (to an
//! auto-approving partner) → migration worker → TransferWaba → revoke → COMPLETED,
//! with every service in one process on a fresh database, with the default
//! configuration, clients on loopback (completion is counted on the event
//! stream, so measuring does not load the system); then the latency of the reads whose
//! cost must not grow with history. Beside it, PostgreSQL's own pgbench
//! (TPC-B, `-i -s 10`, `-c 8 -j 2 -T 20`) on the same server, measured first.
//!
//!     cargo bench -p partnerhub-tests --bench partner_change_throughput
//!     BENCH_HISTORY=100000 cargo bench -p partnerhub-tests --bench partner_change_throughput
//!
//! Environment: BENCH_CHANGES (default 1000), BENCH_CONCURRENCY (submits in
//! flight, default 32), BENCH_BACKEND (`postgres`, the default, or `sqlite`),
//! BENCH_WORKERS (`worker.concurrency`; default: the configured default),
//! BENCH_HISTORY (completed changes stored beforehand, with their events and
//! permission-log entries, bulk-inserted; default 0), BENCH_PGBENCH (0 skips
//! pgbench), BENCH_READS (calls per read latency, default 300), BENCH_GRANT
//! (1: each change names every number of its WABA to grant to the
//! destination, so the saga's grant step runs too; default 0). Writes the
//! report to stdout and to target/bench-reports/partner_change_throughput[-history].txt.
//! A measurement, not a test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark: failing loudly is right

use std::{fmt::Write as _, future::Future, process::Command, sync::Arc, time::Duration};

use partnerhub_proto::{partnerchange::v1 as pc, permissions::v1 as pm};
use partnerhub_runtime::config::DatabaseSettings;
use partnerhub_tests::{
    Backend, ServiceSections, TestApp,
    bench::{HISTORY_CLIENT, auto_approve_world, cpu_ticks, env_number, percentile, preload_history},
};
use tokio::{sync::Semaphore, time::Instant};

#[tokio::main]
async fn main() {
    let changes = env_number("BENCH_CHANGES", 1000);
    let concurrency = env_number("BENCH_CONCURRENCY", 32);
    let history = env_number("BENCH_HISTORY", 0);
    let reads = env_number("BENCH_READS", 300);
    let grant = env_number("BENCH_GRANT", 0) != 0;
    let workers = std::env::var("BENCH_WORKERS").ok().and_then(|value| value.parse::<u32>().ok());
    let backend = match std::env::var("BENCH_BACKEND").as_deref() {
        Ok("sqlite") => Backend::Sqlite,
        _ => Backend::Postgres,
    };
    let mut report = String::new();
    let pgbench = (backend == Backend::Postgres && env_number("BENCH_PGBENCH", 1) != 0).then(pgbench_tps).flatten();

    let (mut preload_time, mut history_middle) = (Duration::ZERO, String::new());
    let app = TestApp::spawn_prepared(
        backend,
        |settings| {
            // The defaults, where the test harness sets its own.
            settings.database.max_connections = DatabaseSettings::default().max_connections;
            let worker = &mut settings.partner_change().worker;
            let defaults = partnerhub_partner_change::settings::WorkerSettings::default();
            (worker.poll_interval, worker.backoff_initial, worker.backoff_max) =
                (defaults.poll_interval, defaults.backoff_initial, defaults.backoff_max);
            if let Some(workers) = workers {
                worker.concurrency = workers;
            }
        },
        async |db, keys| {
            if history > 0 {
                (preload_time, history_middle) = preload_history(db, keys, history).await;
            }
        },
    )
    .await;
    let workers = app.settings.clone().partner_change().worker.concurrency;

    // Set-up (not measured).
    let world = auto_approve_world(&mut app.account("support:bench"), changes, 2).await;
    let (destination, client, wabas) = (world.destination, world.client, world.waba_ids.clone());
    let mut numbers_to_grant = Vec::with_capacity(wabas.len());
    for waba_id in &wabas {
        let numbers = if grant {
            let request = partnerhub_proto::account::v1::GetWabaRequest { waba_id: waba_id.clone() };
            app.account("support:bench").get_waba(request).await.unwrap().into_inner().waba.unwrap().phone_numbers
        } else {
            Vec::new()
        };
        numbers_to_grant.push(numbers);
    }

    // Completion is watched on the event stream (as the partner hub backend
    // would), not by polling lists: a poll of 1,000 rows every few
    // milliseconds would load the very system being measured.
    let mut watcher = app.partner_change(&format!("client:{}", client.client_id));
    let request = pc::WatchPartnerChangeEventsRequest { start_from: pc::StartFrom::Now.into(), ..Default::default() };
    let mut events = watcher.watch_partner_change_events(request).await.unwrap().into_inner();
    // The stream is open once its first heartbeat (the start) has come.
    events.message().await.unwrap().unwrap();
    let all_completed = tokio::spawn(async move {
        let mut completed = 0;
        while completed < changes {
            let message = events.message().await.unwrap().expect("the event stream ended");
            if let Some(pc::watch_partner_change_events_response::Kind::Event(event)) = message.kind
                && event.r#type() == pc::PartnerChangeEventType::Completed
            {
                completed += 1;
            }
        }
        Instant::now()
    });

    // Measured: every submit, until the last change completes.
    let started = Instant::now();
    let cpu_before = cpu_ticks();
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut submits = Vec::new();
    let mut change_ids = Vec::new();
    for (index, (waba_id, grant_phone_numbers)) in wabas.into_iter().zip(numbers_to_grant).enumerate() {
        let permit = permits.clone().acquire_owned().await.unwrap();
        let mut client_api = app.partner_change(&format!("client:{}", client.client_id));
        let request = pc::SubmitPartnerChangeRequest {
            request_id: format!("bench-{index}"),
            waba_id,
            destination_partner_id: destination.partner_id.clone(),
            accepted_terms_version: "v1".into(),
            grant_phone_numbers,
            migrate_after: None,
        };
        submits.push(tokio::spawn(async move {
            let change = client_api.submit_partner_change(request).await.unwrap().into_inner().partner_change.unwrap();
            drop(permit);
            change.partner_change_id
        }));
    }
    for submit in submits {
        change_ids.push(submit.await.unwrap());
    }
    let submitted_after = started.elapsed();
    let finished = tokio::time::timeout(Duration::from_secs(600), all_completed)
        .await
        .expect("the changes did not all complete in 10 minutes")
        .unwrap();
    let elapsed = finished - started;
    let cpu = cpu_before.until(cpu_ticks());
    // The stream's count, checked against the table.
    let mut support = app.partner_change("support:bench");
    assert_eq!(count_completed(&mut support, &client.client_id).await, changes, "COMPLETED events vs. rows");
    let per_second = changes as f64 / elapsed.as_secs_f64();

    let title = if history > 0 { format!(", {history} changes of history") } else { String::new() };
    writeln!(
        report,
        "partner change throughput ({backend:?}, all services in one process, default configuration{title})"
    )
    .unwrap();
    if history > 0 {
        writeln!(report, "history preloaded in: {preload_time:.2?}").unwrap();
    }
    writeln!(report, "worker.concurrency: {workers}; changes: {changes}, submits in flight: {concurrency}").unwrap();
    if grant {
        writeln!(report, "each change grants every number of its WABA to the destination (BENCH_GRANT=1)").unwrap();
    }
    writeln!(report, "all submitted after: {submitted_after:.2?}").unwrap();
    writeln!(report, "all completed after: {elapsed:.2?}").unwrap();
    writeln!(report, "completed per second: {per_second:.1}").unwrap();
    writeln!(
        report,
        "machine CPU while measured: {:.0}% idle, {:.0}% stolen by other guests; CPU time per change (whole machine, this process and PostgreSQL): {:.2?}",
        cpu.idle_share() * 100.0,
        cpu.steal_share() * 100.0,
        cpu.busy_per(changes)
    )
    .unwrap();
    match pgbench {
        Some(tps) => writeln!(
            report,
            "pgbench TPC-B (-s 10 -c 8 -j 2 -T 20) on the same server: {tps:.0} tps; changes/s ÷ pgbench tps = {:.3}",
            per_second / tps
        )
        .unwrap(),
        None => writeln!(report, "pgbench: not run (absent, BENCH_PGBENCH=0, or SQLite)").unwrap(),
    }

    // The reads whose cost must not grow with history, one call at a time.
    let history_change = if history > 0 { history_middle.clone() } else { change_ids[0].clone() };
    writeln!(report, "\nread latency, {reads} sequential calls each (p50 / p99):").unwrap();
    let list = |client_id: String| {
        let support = app.partner_change("support:bench");
        move || {
            let request =
                pc::ListPartnerChangesRequest { client_id: client_id.clone(), page_size: 50, ..Default::default() };
            let mut support = support.clone();
            async move { support.list_partner_changes(request).await.map(drop) }
        }
    };
    let line = latency(reads, list(client.client_id.clone())).await;
    writeln!(report, "  ListPartnerChanges (the bench's client, {changes} changes, page of 50): {line}").unwrap();
    if history > 0 {
        let line = latency(reads, list(HISTORY_CLIENT.to_owned())).await;
        writeln!(report, "  ListPartnerChanges (the history's client, {history} changes, page of 50): {line}").unwrap();
    }
    let line = latency(reads, || {
        let request = pc::GetPartnerChangeHistoryRequest { partner_change_id: history_change.clone() };
        let mut support = support.clone();
        async move { support.get_partner_change_history(request).await.map(drop) }
    })
    .await;
    writeln!(report, "  GetPartnerChangeHistory: {line}").unwrap();
    let preview_waba = world.waba_ids[0].clone();
    let line = latency(reads, || {
        // Back to the source partner (which does not auto-approve): a full check.
        let request = pc::PreviewPartnerChangeRequest {
            waba_id: preview_waba.clone(),
            destination_partner_id: world.source.partner_id.clone(),
            migrate_after: None,
        };
        let mut client_api = app.partner_change(&format!("client:{}", client.client_id));
        async move { client_api.preview_partner_change(request).await.map(drop) }
    })
    .await;
    writeln!(report, "  PreviewPartnerChange: {line}").unwrap();
    let messaging = app.permissions("service:messaging");
    let line = latency(reads, || {
        let request = pm::CheckPermissionRequest {
            partner_id: destination.partner_id.clone(),
            phone_number: "+4915100000001".into(),
        };
        let mut messaging = messaging.clone();
        async move { messaging.check_permission(request).await.map(drop) }
    })
    .await;
    writeln!(report, "  CheckPermission: {line}").unwrap();

    if history > 0 && backend == Backend::Postgres {
        writeln!(report, "\nquery plans with the history (EXPLAIN; a Seq Scan on a big table would grow with it):")
            .unwrap();
        report.push_str(&explain_plans(&app.database_url(), &client.client_id, &history_middle).await);
    }

    print!("{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-reports");
    std::fs::create_dir_all(&dir).unwrap();
    let name = if history > 0 { "partner_change_throughput-history.txt" } else { "partner_change_throughput.txt" };
    std::fs::write(dir.join(name), report).unwrap();
}

async fn count_completed(
    support: &mut pc::partner_change_service_client::PartnerChangeServiceClient<partnerhub_tests::Authed>,
    client_id: &str,
) -> usize {
    let mut completed = 0;
    let mut page_token = String::new();
    loop {
        let page = support
            .list_partner_changes(pc::ListPartnerChangesRequest {
                client_id: client_id.to_owned(),
                states: vec![pc::PartnerChangeState::Completed.into()],
                page_size: 500,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        completed += page.partner_changes.len();
        if page.next_page_token.is_empty() {
            return completed;
        }
        page_token = page.next_page_token;
    }
}

/// p50 / p99 of `calls` sequential calls (after 20 to warm up).
async fn latency<F, Fut>(calls: usize, mut call: F) -> String
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), tonic::Status>>,
{
    for _ in 0..20 {
        call().await.unwrap();
    }
    let mut micros = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        call().await.unwrap();
        micros.push(u64::try_from(started.elapsed().as_micros()).unwrap());
    }
    micros.sort_unstable();
    format!("{:.2?} / {:.2?}", percentile(&micros, 0.50), percentile(&micros, 0.99))
}

/// pgbench's TPC-B transactions per second on the local server, on a
/// database of its own (created and dropped here); `None` without pgbench.
fn pgbench_tps() -> Option<f64> {
    let database = format!("partnerhub_pgbench_{}", uuid::Uuid::new_v4().simple());
    let run = |program: &str, args: &[&str]| {
        Command::new(program).args(["-h", "127.0.0.1", "-U", "postgres"]).args(args).output()
    };
    let created = run("createdb", &[&database]).ok().filter(|output| output.status.success())?;
    drop(created);
    let tps = (|| {
        let init =
            run("pgbench", &["-i", "-s", "10", "-q", &database]).ok().filter(|output| output.status.success())?;
        drop(init);
        let output = run("pgbench", &["-c", "8", "-j", "2", "-T", "20", &database]).ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find(|line| line.starts_with("tps = "))
            .and_then(|line| line.trim_start_matches("tps = ").split_whitespace().next()?.parse().ok())
    })();
    let _ = run("dropdb", &[&database]);
    tps
}

/// The plans of the queries whose cost must not grow with history, one line
/// per plan node, as PostgreSQL chooses them on the loaded database.
async fn explain_plans(url: &str, bench_client: &str, history_change: &str) -> String {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let db = Database::connect(url).await.unwrap();
    let list = |client: &str| {
        format!("SELECT * FROM partner_changes WHERE client_id = '{client}' ORDER BY partner_change_id DESC LIMIT 51")
    };
    let queries = [
        ("ListPartnerChanges (the history's client)", list(HISTORY_CLIENT)),
        ("ListPartnerChanges (the bench's client)", list(bench_client)),
        (
            "GetPartnerChangeHistory",
            format!("SELECT * FROM partner_change_events WHERE partner_change_id = '{history_change}' ORDER BY position"),
        ),
        (
            "the worker's claim",
            "SELECT * FROM partner_changes WHERE (state = 'APPROVED' AND (migrate_after IS NULL OR migrate_after <= now())) OR (state = 'MIGRATING' AND (lease_expire_time IS NULL OR lease_expire_time < now())) ORDER BY update_time LIMIT 16 FOR UPDATE SKIP LOCKED".to_owned(),
        ),
        (
            "the permission cache's sync (the migrating numbers and the log, one statement)",
            "SELECT CAST(NULL AS BIGINT) AS position, source_partner_id AS partner_id, phone_numbers AS phone_number, \
             CAST(NULL AS BOOLEAN) AS allowed, CAST(NULL AS TIMESTAMPTZ) AS time FROM partner_change_moves WHERE migrating \
             UNION ALL SELECT * FROM (SELECT position, partner_id, phone_number, allowed, time FROM permission_log \
             WHERE position > 199990 ORDER BY position LIMIT 10000) AS entries"
                .to_owned(),
        ),
        (
            "a partner's stream replay",
            "SELECT * FROM partner_change_events WHERE position > 0 AND (source_partner_id = 'partner-history-source' OR destination_partner_id = 'partner-history-source') ORDER BY position LIMIT 256".to_owned(),
        ),
    ];
    let mut plans = String::new();
    for (name, sql) in queries {
        writeln!(plans, "  {name}:").unwrap();
        let rows = db
            .query_all_raw(Statement::from_string(db.get_database_backend(), format!("EXPLAIN {sql}")))
            .await
            .unwrap();
        for row in rows {
            writeln!(plans, "    {}", row.try_get::<String>("", "QUERY PLAN").unwrap()).unwrap();
        }
    }
    plans
}
