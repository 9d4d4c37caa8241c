//! `cloudpc admin password|sessions|revoke`: the admin page's login. These work on the store
//! directly (the running hub reads the password and sessions there at each request, so a
//! change is in force when the command returns).

use std::io::BufRead;

use super::Globals;
use crate::store::Store;

#[derive(Debug, clap::Subcommand)]
pub enum AdminCmd {
    /// Set the admin page's password (asked for on standard input; at least 10 characters).
    /// Every open session ends.
    Password,
    /// List the admin page's login sessions.
    Sessions {
        #[arg(long)]
        json: bool,
    },
    /// End a login session by id (from `cloudpc admin sessions`).
    Revoke { id: i64 },
}

fn when(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| unix.to_string())
}

pub fn admin(g: &Globals, c: AdminCmd) -> anyhow::Result<()> {
    let store = Store::open(&g.state_dir())?;
    match c {
        AdminCmd::Password => {
            eprintln!("New admin password (at least 10 characters), then Enter:");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let password = line.trim_end_matches(['\n', '\r']);
            let phc = crate::admin::hash_password(password)?;
            store.set_admin_password(&phc)?;
            eprintln!("Admin password set; every earlier login session has ended.");
        }
        AdminCmd::Sessions { json } => {
            let sessions = store.admin_sessions()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sessions)?);
            } else if sessions.is_empty() {
                eprintln!("No login sessions.");
            } else {
                println!("{:<6} {:<22} {:<22} BROWSER", "ID", "SINCE", "LAST USED");
                for s in sessions {
                    println!(
                        "{:<6} {:<22} {:<22} {}",
                        s.id,
                        when(s.created_at),
                        when(s.last_seen),
                        s.agent
                    );
                }
            }
        }
        AdminCmd::Revoke { id } => {
            if store.revoke_admin_session(id)? {
                eprintln!("Session {id} ended.");
            } else {
                anyhow::bail!("there is no session {id}; see `cloudpc admin sessions`");
            }
        }
    }
    Ok(())
}
