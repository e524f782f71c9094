//! `kubectl eagleeye`: the day-2 commands of eagle-eye-operator as a kubectl plugin. Put this
//! binary on the PATH and kubectl finds it by its name.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Log in to Eagle Eye Networks for the eagle-eye-operator, and see how its credentials are.
#[derive(Parser, Debug)]
#[command(name = "kubectl-eagleeye", bin_name = "kubectl eagleeye", version)]
struct Plugin {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Phase 1 login: log in to Eagle Eye in a browser and store the refresh token and the
    /// EagleEyeCredential for the operator. Run it again for the 90-day re-login.
    Authorize(eagle_eye_operator::authorize::AuthorizeArgs),
    /// Health of EagleEyeCredentials: a table, or one credential in depth. Exits 3 when any
    /// credential shown is not Ready.
    Status(eagle_eye_operator::status_cli::StatusArgs),
    /// Refresh a credential now, through every safety rule of the operator. This ends the
    /// access token workloads use now. Exits 3 when the operator refuses or the refresh
    /// fails.
    Renew(eagle_eye_operator::renew_cli::RenewArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let plugin = Plugin::parse();
    eagle_eye_operator::kubectl::init_logging(eagle_eye_operator::logging::Format::Text, None);
    let result = match plugin.command {
        PluginCommand::Authorize(args) => eagle_eye_operator::authorize::run(args).await,
        PluginCommand::Status(args) => eagle_eye_operator::status_cli::run(args).await,
        PluginCommand::Renew(args) => eagle_eye_operator::renew_cli::run(args).await,
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}
