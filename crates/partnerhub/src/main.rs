use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = partnerhub::cli::Cli::parse();
    match partnerhub::cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("partnerhub: {err}");
            ExitCode::FAILURE
        }
    }
}
