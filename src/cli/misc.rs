//! `cloudpc status`, `block|allow`, `internet`, `lists`.

use super::Globals;
use crate::store::RuleAction;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum RuleCmd {
    /// Add a domain (applies to its subdomains too).
    Add { domain: String },
    /// Remove a domain added with `add`.
    Remove { domain: String },
    /// List the domains added with `add`.
    List,
}

#[derive(Debug, clap::Args)]
pub struct InternetArgs {
    /// `on` or `off`.
    #[arg(value_parser = ["on", "off"])]
    pub state: String,
}

#[derive(Debug, clap::Args)]
pub struct ListsArgs {}

pub fn status(_g: &Globals, _a: StatusArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}

pub fn rule(g: &Globals, action: RuleAction, c: RuleCmd) -> anyhow::Result<()> {
    let store = crate::store::Store::open(&g.state_dir())?;
    let norm = |d: &str| {
        crate::dns::name::normalize_domain(d)
            .ok_or_else(|| anyhow::anyhow!("{d:?} is not a domain name, e.g. ads.example.com"))
    };
    match c {
        RuleCmd::Add { domain } => {
            let d = norm(&domain)?;
            store.add_rule(&d, action)?;
            println!("added {d}");
        }
        RuleCmd::Remove { domain } => {
            let d = norm(&domain)?;
            if !store.remove_rule(&d, action)? {
                anyhow::bail!("{d} was not in the list; `list` shows what is");
            }
            println!("removed {d}");
        }
        RuleCmd::List => {
            for (d, a) in store.rules()? {
                if a == action {
                    println!("{d}");
                }
            }
        }
    }
    Ok(())
}

pub fn internet(g: &Globals, a: InternetArgs) -> anyhow::Result<()> {
    let store = crate::store::Store::open(&g.state_dir())?;
    store.set_meta("internet", &a.state)?;
    println!("internet through the hub: {}", a.state);
    Ok(())
}

pub fn lists(_g: &Globals, _a: ListsArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
