//! The operator binary: `run` the controller, print the `crd`, log in (`authorize`), or
//! show `status`.
#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = eagle_eye_operator::cli::Cli::parse();
    match eagle_eye_operator::cli::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
