//! `cloudpc api token create|list|revoke`.

use super::{Globals, Manager};

#[derive(Debug, clap::Subcommand)]
pub enum ApiCmd {
    /// Tokens for the API's TCP listener (`api.listen`).
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Make a token; it is printed once (only its hash is kept).
    Create {
        /// What the token is for, e.g. backup-script.
        name: String,
    },
    /// List tokens (ids and names; never the tokens).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id; it is refused from then on.
    Revoke { id: i64 },
}

pub fn api(g: &Globals, c: ApiCmd) -> anyhow::Result<()> {
    let m = Manager::open(g)?;
    let ApiCmd::Token(t) = c;
    match t {
        TokenCmd::Create { name } => {
            let t = m.api().create_token(&name)?;
            println!("{}", t.token);
            eprintln!(
                "Token {} ({:?}) made; it is shown only now. Send it as `Authorization: Bearer TOKEN`.",
                t.id, t.name
            );
        }
        TokenCmd::List { json } => {
            let tokens = m.api().tokens()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else if tokens.is_empty() {
                eprintln!("No API tokens; make one with `cloudpc api token create NAME`.");
            } else {
                println!("{:<6} {:<24} CREATED", "ID", "NAME");
                for t in tokens {
                    println!("{:<6} {:<24} {}", t.id, t.name, t.created_at);
                }
            }
        }
        TokenCmd::Revoke { id } => {
            m.api().revoke_token(id)?;
            eprintln!("Revoked token {id}.");
        }
    }
    Ok(())
}
