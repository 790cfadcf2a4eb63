//! The local cluster (`deploy/cluster.sh`, the same launcher a user runs) on a
//! fresh PostgreSQL database: every service as its own processes, replicas of
//! each, with typed clients for any member.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use partnerhub_proto::{
    account::v1::account_service_client::AccountServiceClient,
    partnerchange::v1::partner_change_service_client::PartnerChangeServiceClient,
    permissions::v1::permissions_service_client::PermissionsServiceClient,
};
use partnerhub_runtime::{
    auth::{BearerToken, Subject, TokenKeys},
    config::Settings,
};
use secrecy::SecretString;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

use crate::{Authed, Backend, Deployment, TestDatabase, binary::partnerhub_binary};

/// One process of the cluster, as its `cluster.json` lists it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub url: String,
    pub metrics_url: String,
    pub pid: u32,
    pub log: PathBuf,
}

/// A running local cluster. Dropping it kills the launcher and every member.
pub struct Cluster {
    launcher: Child,
    pub dir: PathBuf,
    pub members: Vec<Member>,
    keys: TokenKeys,
    database: TestDatabase,
}

impl Cluster {
    /// `deploy/cluster.sh --replicas <replicas>` on free ports and a new
    /// database, with `env` passed to every member; returns once all serve.
    pub async fn start(replicas: u16, env: &[(&str, &str)]) -> Cluster {
        Self::start_with_args(replicas, &[], env).await
    }

    /// Like [`Cluster::start`], with more arguments for the launcher (e.g. `--tls`).
    pub async fn start_with_args(replicas: u16, args: &[&str], env: &[(&str, &str)]) -> Cluster {
        let database = TestDatabase::create(Backend::Postgres).await;
        let url = database.url().expect("a PostgreSQL database has a URL");
        let dir = database.data_dir().join("cluster");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster.sh");
        let output = std::fs::File::create(database.data_dir().join("launcher.log")).unwrap();
        let launcher = Command::new(script)
            .args(["--replicas", &replicas.to_string(), "--base-port", "0", "--database-url", &url, "--dir"])
            .arg(&dir)
            .args(args)
            .env("PARTNERHUB_BIN", partnerhub_binary())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap();
        let mut launcher = launcher;
        let members = wait_for_manifest(&mut launcher, &dir);
        let mut settings = Settings::default();
        settings.database.url = Some(SecretString::from(url));
        settings.auth.signing_key_file = Some(dir.join("signing.key"));
        let keys = TokenKeys::load_or_generate(&settings).unwrap();
        Cluster { launcher, dir, members, keys, database }
    }

    /// What the launcher printed.
    /// The name of the cluster's PostgreSQL database.
    pub fn database_name(&self) -> String {
        let url = self.database.url().expect("a PostgreSQL database has a URL");
        url.rsplit('/').next().unwrap_or_default().to_owned()
    }

    pub fn launcher_log(&self) -> String {
        launcher_log(&self.dir)
    }

    pub fn member(&self, name: &str) -> &Member {
        self.members.iter().find(|member| member.name == name).unwrap_or_else(|| panic!("no member {name}"))
    }

    /// A valid token for `subject`, signed with the cluster's key.
    pub fn token(&self, subject: &str) -> String {
        let subject: Subject = subject.parse().unwrap();
        self.keys.mint(&subject, Duration::from_secs(600)).unwrap()
    }

    fn channel(&self, member: &str, subject: &str) -> Authed {
        let channel = Channel::from_shared(self.member(member).url.clone()).unwrap().connect_lazy();
        InterceptedService::new(channel, BearerToken::new(&self.token(subject)).unwrap())
    }

    pub fn account(&self, member: &str, subject: &str) -> AccountServiceClient<Authed> {
        AccountServiceClient::new(self.channel(member, subject))
    }

    pub fn partner_change(&self, member: &str, subject: &str) -> PartnerChangeServiceClient<Authed> {
        PartnerChangeServiceClient::new(self.channel(member, subject))
    }

    pub fn permissions(&self, member: &str, subject: &str) -> PermissionsServiceClient<Authed> {
        PermissionsServiceClient::new(self.channel(member, subject))
    }

    pub fn webhooks(
        &self,
        member: &str,
        subject: &str,
    ) -> partnerhub_proto::webhooks::v1::webhook_service_client::WebhookServiceClient<Authed> {
        partnerhub_proto::webhooks::v1::webhook_service_client::WebhookServiceClient::new(self.channel(member, subject))
    }

    /// The services as `account`, `partner_change` and `permissions` (member names) serve them.
    pub fn view<'a>(&'a self, account: &'a str, partner_change: &'a str, permissions: &'a str) -> ClusterView<'a> {
        ClusterView { cluster: self, account, partner_change, permissions }
    }

    /// SIGKILL: the member dies at once, mid-call or mid-transaction.
    pub fn kill(&self, member: &str) {
        let pid = self.member(member).pid.to_string();
        assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    }

    /// The member's `/metrics`, as text.
    pub async fn scrape(&self, member: &str) -> String {
        scrape(&self.member(member).metrics_url).await
    }

    /// SIGTERM to the launcher; returns its exit status once it and every member are gone.
    pub fn stop(mut self) -> ExitStatus {
        let pid = self.launcher.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.launcher.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the cluster did not stop within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        for member in &self.members {
            assert!(!is_running(member.pid), "{} (pid {}) outlived the launcher", member.name, member.pid);
        }
        status
    }
}

/// One member per service, for tests written against [`Deployment`].
#[derive(Clone, Copy)]
pub struct ClusterView<'a> {
    cluster: &'a Cluster,
    account: &'a str,
    partner_change: &'a str,
    permissions: &'a str,
}

impl Deployment for ClusterView<'_> {
    fn account(&self, subject: &str) -> AccountServiceClient<Authed> {
        self.cluster.account(self.account, subject)
    }

    fn partner_change(&self, subject: &str) -> PartnerChangeServiceClient<Authed> {
        self.cluster.partner_change(self.partner_change, subject)
    }

    fn permissions(&self, subject: &str) -> PermissionsServiceClient<Authed> {
        self.cluster.permissions(self.permissions, subject)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.launcher.try_wait().ok().flatten().is_none() {
            for member in &self.members {
                let _ = Command::new("kill").args(["-KILL", &member.pid.to_string()]).status();
            }
            let _ = self.launcher.kill();
            let _ = self.launcher.wait();
        }
    }
}

/// Whether a process runs (a zombie, dead but not yet reaped, counts as gone).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

/// `GET` a Prometheus endpoint over plain HTTP/1.1.
pub async fn scrape(url: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    body.to_owned()
}

/// The value of one sample in a scrape, e.g. `partnerhub_partner_change_saga_steps_total{step="transfer",outcome="ok"}`
/// (labels in the order they are exported); 0 when absent.
pub fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Waits for the launcher's `cluster.json` (written once every member serves).
fn wait_for_manifest(launcher: &mut Child, dir: &Path) -> Vec<Member> {
    let manifest = dir.join("cluster.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(text) = std::fs::read_to_string(&manifest)
            && let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
        {
            return json["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|member| Member {
                    name: member["name"].as_str().unwrap().to_owned(),
                    url: member["url"].as_str().unwrap().to_owned(),
                    metrics_url: member["metrics_url"].as_str().unwrap().to_owned(),
                    pid: u32::try_from(member["pid"].as_u64().unwrap()).unwrap(),
                    log: PathBuf::from(member["log"].as_str().unwrap()),
                })
                .collect();
        }
        if let Some(status) = launcher.try_wait().unwrap() {
            panic!("the cluster launcher exited with {status}:\n{}", launcher_log(dir));
        }
        assert!(Instant::now() < deadline, "the cluster did not start within 120 s:\n{}", launcher_log(dir));
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn launcher_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.parent().unwrap().join("launcher.log")).unwrap_or_default()
}
