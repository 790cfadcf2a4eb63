use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    partnerhub::cli::main().await
}
