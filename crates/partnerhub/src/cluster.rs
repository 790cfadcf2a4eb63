//! `partnerhub cluster`: a local production-shaped deployment. Every service
//! runs as its own process, `replicas` of each, on one PostgreSQL database
//! (created when missing), each process finding its peers' replicas by
//! address. Ctrl-C or SIGTERM stops them all gracefully.
//!
//! It writes into `--dir`: `partnerhub.toml` (the database and the signing key,
//! so `partnerhub --config <dir>/partnerhub.toml token …` mints tokens the
//! cluster accepts), a log per process, and `cluster.json`, written once every
//! process serves, which lists them (name, address, metrics address, pid).

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};
use partnerhub_runtime::{
    auth::generate_key_file,
    config::{PeerSettings, Settings},
};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde::Serialize;
use tokio::process::{Child, Command};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::app::{SERVICES, open_database, section_readers};

/// How the cluster is laid out.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterOptions {
    /// Processes per service.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub replicas: u16,
    /// The PostgreSQL database the cluster uses; created when missing.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/partnerhub_cluster")]
    pub database_url: String,
    /// The first gRPC port; each process takes the next (metrics on the port + 1000).
    /// 0: free ports chosen at random. The default range lies below Linux's
    /// ephemeral ports, so no outgoing connection can be holding one.
    #[arg(long, default_value_t = 21051)]
    pub base_port: u16,
    /// Where the config, the signing key, the logs and cluster.json go.
    #[arg(long, default_value = "target/cluster")]
    pub dir: PathBuf,
    /// Serve TLS: a self-signed certificate for localhost and 127.0.0.1 is
    /// generated into `--dir` (`cert.pem`, `key.pem`); every member presents
    /// it and trusts it when calling its peers.
    #[arg(long)]
    pub tls: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("the database URL must be postgres://…/<name> with a name of [a-z0-9_]: {0}")]
    DatabaseUrl(String),
    #[error("cannot create the cluster's database: {0}")]
    CreateDatabase(sea_orm::DbErr),
    #[error(transparent)]
    Startup(#[from] crate::app::StartupError),
    #[error(transparent)]
    Key(#[from] partnerhub_runtime::auth::KeyError),
    #[error(transparent)]
    Config(#[from] partnerhub_runtime::config::ConfigError),
    #[error("cannot make the cluster's certificate: {0}")]
    Certificate(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("interrupted while starting; every process started is stopped")]
    Interrupted,
    #[error("{name} exited ({status}) before serving:\n{log}")]
    Exited { name: String, status: String, log: String },
    #[error("{name} did not start serving within {timeout:?}; see {log}")]
    NotServing { name: String, timeout: Duration, log: String },
}

/// One process of the cluster, as `cluster.json` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub name: String,
    pub service: String,
    pub url: String,
    pub metrics_url: String,
    pub pid: u32,
    pub log: PathBuf,
}

#[derive(Debug, Serialize)]
struct Manifest<'a> {
    database_url: &'a str,
    config: &'a Path,
    members: &'a [Member],
}

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(15);

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ClusterError {
    let what = what.into();
    move |source| ClusterError::Io { what, source }
}

/// Starts the cluster and runs it until SIGINT or SIGTERM, then stops every process.
pub async fn run(options: ClusterOptions) -> Result<(), ClusterError> {
    let dir = &options.dir;
    std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    create_database(&options.database_url).await?;
    let config = write_config(dir, &options.database_url, options.tls)?;
    let scheme = if options.tls { "https" } else { "http" };
    let ca = match options.tls {
        true => Some(tonic::transport::Certificate::from_pem(
            std::fs::read(dir.join("cert.pem")).map_err(io("cannot read the cluster's certificate"))?,
        )),
        false => None,
    };
    // Migrate once up front rather than racing six processes for the lock.
    let settings = Settings::load(Some(&config), &section_readers())?;
    open_database(&settings).await?;

    let services = SERVICES;
    let count = services.len() * usize::from(options.replicas);
    let ports = ports(options.base_port, count)?;
    // Every process is told where every service's replicas are (`PARTNERHUB__PEERS__<SERVICE>_URLS`).
    let peer_addresses: Vec<(String, String)> = services
        .iter()
        .enumerate()
        .map(|(index, service)| {
            let first = index * usize::from(options.replicas);
            let urls: Vec<String> = ports[first..first + usize::from(options.replicas)]
                .iter()
                .map(|(grpc, _)| format!("{scheme}://127.0.0.1:{grpc}"))
                .collect();
            let key = PeerSettings::urls_key(service.name()).to_uppercase();
            (format!("PARTNERHUB__PEERS__{key}"), urls.join(","))
        })
        .collect();

    let mut children: Vec<(Member, Child)> = Vec::with_capacity(count);
    let started = async {
        for (index, (grpc_port, metrics_port)) in ports.iter().enumerate() {
            let service = services[index / usize::from(options.replicas)];
            let name = format!("{}-{}", service.name(), index % usize::from(options.replicas) + 1);
            let log = dir.join(format!("{name}.log"));
            let log_file = std::fs::File::create(&log).map_err(io(format!("cannot create {}", log.display())))?;
            let child = Command::new(std::env::current_exe().map_err(io("cannot find this executable"))?)
                .arg("--config")
                .arg(&config)
                .args(["serve", "--service", service.name()])
                .env("PARTNERHUB__SERVER__LISTEN_ADDR", format!("127.0.0.1:{grpc_port}"))
                .env("PARTNERHUB__TELEMETRY__METRICS_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}"))
                .envs(peer_addresses.iter().map(|(key, urls)| (key, urls)))
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().map_err(io("cannot share a log file"))?)
                .stderr(log_file)
                .spawn()
                .map_err(io(format!("cannot start {name}")))?;
            let member = Member {
                pid: child.id().unwrap_or_default(),
                url: format!("{scheme}://127.0.0.1:{grpc_port}"),
                metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
                service: service.name().to_owned(),
                name,
                log,
            };
            children.push((member, child));
        }
        for (member, child) in &mut children {
            wait_until_serving(member, child, ca.as_ref()).await?;
        }
        Ok::<_, ClusterError>(())
    };
    // A signal during start-up stops what has started.
    let started = tokio::select! {
        started = started => started,
        () = partnerhub_runtime::server::shutdown_signal() => Err(ClusterError::Interrupted),
    };
    if let Err(err) = started {
        stop(&mut children).await;
        return Err(err);
    }

    let members: Vec<Member> = children.iter().map(|(member, _)| member.clone()).collect();
    let manifest = serde_json::to_string_pretty(&Manifest {
        database_url: &options.database_url,
        config: &config,
        members: &members,
    })
    .unwrap_or_default();
    let manifest_path = dir.join("cluster.json");
    let written =
        std::fs::write(&manifest_path, manifest).map_err(io(format!("cannot write {}", manifest_path.display())));
    if let Err(err) = written {
        stop(&mut children).await;
        return Err(err);
    }
    print_members(&members, &options.database_url, &config);

    watch(&mut children).await;
    stop(&mut children).await;
    let _ = std::fs::remove_file(&manifest_path);
    println!("cluster stopped");
    Ok(())
}

/// Waits for SIGINT or SIGTERM, reporting members that exit meanwhile.
async fn watch(children: &mut [(Member, Child)]) {
    let mut reported = vec![false; children.len()];
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    let signal = partnerhub_runtime::server::shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => return,
            _ = poll.tick() => {}
        }
        for (index, (member, child)) in children.iter_mut().enumerate() {
            if !reported[index]
                && let Ok(Some(status)) = child.try_wait()
            {
                reported[index] = true;
                eprintln!("{} exited ({status}); the other replicas carry on", member.name);
            }
        }
    }
}

/// SIGTERM to every member still running; SIGKILL to any still there after the grace period.
async fn stop(children: &mut [(Member, Child)]) {
    for (_, child) in children.iter_mut() {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid.cast_signed()), Signal::SIGTERM);
        }
    }
    for (member, child) in children.iter_mut() {
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                eprintln!("{} did not stop within {STOP_GRACE:?}; killing it", member.name);
                let _ = child.kill().await;
            }
        }
    }
}

async fn wait_until_serving(
    member: &Member,
    child: &mut Child,
    ca: Option<&tonic::transport::Certificate>,
) -> Result<(), ClusterError> {
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&member.log).unwrap_or_default();
            let last_lines: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(ClusterError::Exited {
                name: member.name.clone(),
                status: status.to_string(),
                log: last_lines.into_iter().rev().collect::<Vec<_>>().join("\n"),
            });
        }
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(member.url.clone())
            .map(|endpoint| endpoint.connect_timeout(Duration::from_secs(1)))
            .and_then(|endpoint| match ca {
                Some(ca) => endpoint.tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(ca.clone())),
                None => Ok(endpoint),
            })
            && let Ok(channel) = channel.connect().await
            && let Ok(response) = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await
            && response.get_ref().status() == ServingStatus::Serving
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ClusterError::NotServing {
        name: member.name.clone(),
        timeout: START_TIMEOUT,
        log: member.log.display().to_string(),
    })
}

/// `count` (gRPC, metrics) port pairs: consecutive from `base`, or free ones when `base` is 0.
fn ports(base: u16, count: usize) -> Result<Vec<(u16, u16)>, ClusterError> {
    if base != 0 {
        return Ok((0..count)
            .map(|offset| {
                let grpc = base.saturating_add(u16::try_from(offset).unwrap_or(u16::MAX));
                (grpc, grpc.saturating_add(1000))
            })
            .collect());
    }
    // Hold every listener until all are chosen, so none is chosen twice.
    let listeners = (0..count * 2)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(io("cannot find free ports"))?;
    let ports: Vec<u16> = listeners
        .iter()
        .map(|listener| listener.local_addr().map(|addr: SocketAddr| addr.port()))
        .collect::<Result<_, _>>()
        .map_err(io("cannot find free ports"))?;
    Ok(ports.chunks(2).map(|pair| (pair[0], pair[1])).collect())
}

/// Creates the database named in `url` on its server, unless it exists.
async fn create_database(url: &str) -> Result<(), ClusterError> {
    let bad_url = || ClusterError::DatabaseUrl(url.to_owned());
    let (server, name) = url.rsplit_once('/').ok_or_else(bad_url)?;
    let name = name.split('?').next().unwrap_or_default();
    let valid = url.starts_with("postgres")
        && !name.is_empty()
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_');
    if !valid {
        return Err(bad_url());
    }
    let admin = Database::connect(format!("{server}/postgres")).await.map_err(ClusterError::CreateDatabase)?;
    let exists = admin
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT 1 FROM pg_database WHERE datname = $1",
            [name.into()],
        ))
        .await
        .map_err(ClusterError::CreateDatabase)?
        .is_some();
    if !exists {
        admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.map_err(ClusterError::CreateDatabase)?;
        println!("created database {name}");
    }
    let _ = admin.close().await;
    Ok(())
}

/// The config every member starts from: the database and the signing key
/// (generated on the first start, kept after).
fn write_config(dir: &Path, database_url: &str, tls: bool) -> Result<PathBuf, ClusterError> {
    let key = dir.join("signing.key");
    if !key.exists() {
        generate_key_file(&key)?;
    }
    let key = key.canonicalize().map_err(io(format!("cannot resolve {}", key.display())))?;
    let config = dir.join("partnerhub.toml");
    let text = format!(
        "# Written by `partnerhub cluster`: what every member of the local cluster shares.\n\
         data_dir = {data_dir:?}\n\n[database]\nurl = {database_url:?}\n\n[auth]\nsigning_key_file = {key:?}\n\n\
         # Webhooks to receivers on this machine, over plain HTTP.\n\
         [webhooks]\nallow_http = true\nallow_private_networks = true\n",
        data_dir = dir.display().to_string(),
        key = key.display().to_string(),
    );
    let text = if tls { format!("{text}\n[server.tls]\n{}", write_certificate(dir)?) } else { text };
    std::fs::write(&config, text).map_err(io(format!("cannot write {}", config.display())))?;
    Ok(config)
}

/// A self-signed certificate for localhost and 127.0.0.1 in `dir` (kept if
/// there); returns the config lines naming it.
fn write_certificate(dir: &Path) -> Result<String, ClusterError> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert.exists() || !key.exists() {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .map_err(|err| ClusterError::Certificate(err.to_string()))?;
        std::fs::write(&cert, certified.cert.pem()).map_err(io(format!("cannot write {}", cert.display())))?;
        // The private key is for this user's eyes only.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&key).map_err(io(format!("cannot write {}", key.display())))?;
        std::io::Write::write_all(&mut file, certified.key_pair.serialize_pem().as_bytes())
            .map_err(io(format!("cannot write {}", key.display())))?;
    }
    let absolute = |path: PathBuf| path.canonicalize().map_err(io(format!("cannot resolve {}", path.display())));
    Ok(format!(
        "cert_file = {:?}\nkey_file = {:?}\n",
        absolute(cert)?.display().to_string(),
        absolute(key)?.display().to_string()
    ))
}

fn print_members(members: &[Member], database_url: &str, config: &Path) {
    println!("Partner Hub cluster on {database_url}:");
    for member in members {
        println!(
            "  {:<18} {:<24} metrics {:<36} pid {:<8} log {}",
            member.name,
            member.url,
            member.metrics_url,
            member.pid,
            member.log.display()
        );
    }
    println!("Tokens: partnerhub --config {} token --subject support:you", config.display());
    println!("Ctrl-C stops every process.");
}
