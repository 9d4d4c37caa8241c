//! `cloudpc person`, `cloudpc share` and `cloudpc invite`: who devices belong to, what guests
//! may reach, and links that let a device join for a person.

use clap::Subcommand;

use super::{Globals, Manager};
use crate::api::{NewInvite, NewPerson, PersonPatch, ShareReq};
use crate::store::Role;

#[derive(Debug, Subcommand)]
pub enum PersonCmd {
    /// Add a person: a member (family, team: the whole network) or a guest (only what is
    /// shared with them).
    Add {
        name: String,
        #[arg(long, value_parser = Role::parse, default_value = "guest")]
        role: Role,
        /// May use the Cloud PC's internet (members may by default, guests may not).
        #[arg(long, value_parser = on_off)]
        internet: Option<bool>,
    },
    /// List the people and their devices.
    List,
    /// Change a person's role or internet.
    Set {
        name: String,
        #[arg(long, value_parser = Role::parse)]
        role: Option<Role>,
        /// `on`, `off`, or `default` (the role's).
        #[arg(long)]
        internet: Option<String>,
    },
    /// Remove a person: all their devices are cut at once.
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ShareCmd {
    /// Share a device (or ports of it) with a person or a group: `nas:445 --with alice`.
    Add {
        /// DEVICE or DEVICE:PORTS (e.g. nas:445, media:8000-8100).
        target: String,
        /// A person, or group:NAME.
        #[arg(long)]
        with: String,
    },
    /// List the shares.
    List,
    /// Stop sharing (DEVICE without ports removes every share of it with them).
    Remove {
        target: String,
        #[arg(long)]
        with: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum InviteCmd {
    /// Make an invite for a person: prints a link (for a browser) and a short code.
    Create {
        #[arg(long)]
        person: String,
        /// How long it is valid (e.g. 12h, 7d).
        #[arg(long, default_value = "7d")]
        expires: String,
        /// How many devices may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// List invites (never their codes).
    List,
    /// Revoke an invite at once.
    Revoke { id: i64 },
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?}: use on or off")),
    }
}

fn when(t: i64) -> String {
    jiff::Timestamp::from_second(t)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default()
}

pub fn person(g: &Globals, c: PersonCmd) -> anyhow::Result<()> {
    let m = Manager::open(g)?;
    match c {
        PersonCmd::Add {
            name,
            role,
            internet,
        } => {
            let p = m.api().add_person(&NewPerson {
                name,
                role,
                internet,
            })?;
            eprintln!(
                "Added {} ({}, internet {}).",
                p.name,
                p.role.as_str(),
                if p.internet_allowed() { "on" } else { "off" }
            );
        }
        PersonCmd::List => {
            let devices = m.api().devices()?;
            println!("{:<20} {:<8} {:<9} DEVICES", "PERSON", "ROLE", "INTERNET");
            for p in m.api().people()? {
                let mine: Vec<&str> = devices
                    .iter()
                    .filter(|d| {
                        d.person
                            .as_deref()
                            .is_some_and(|x| x.eq_ignore_ascii_case(&p.name))
                    })
                    .map(|d| d.name.as_str())
                    .collect();
                println!(
                    "{:<20} {:<8} {:<9} {}",
                    p.name,
                    p.role.as_str(),
                    if p.internet_allowed() { "on" } else { "off" },
                    mine.join(", ")
                );
            }
        }
        PersonCmd::Set {
            name,
            role,
            internet,
        } => {
            let internet = match internet.as_deref() {
                None => None,
                Some("default") => Some(None),
                Some(s) => Some(Some(on_off(s).map_err(anyhow::Error::msg)?)),
            };
            let p = m
                .api()
                .update_person(&name, &PersonPatch { role, internet })?;
            eprintln!(
                "{}: {}, internet {}.",
                p.name,
                p.role.as_str(),
                if p.internet_allowed() { "on" } else { "off" }
            );
        }
        PersonCmd::Remove { name } => {
            let gone = m.api().remove_person(&name)?;
            if gone.is_empty() {
                eprintln!("Removed {name}.");
            } else {
                eprintln!("Removed {name} and cut their devices: {}.", gone.join(", "));
            }
        }
    }
    Ok(())
}

pub fn share(g: &Globals, c: ShareCmd) -> anyhow::Result<()> {
    let m = Manager::open(g)?;
    match c {
        ShareCmd::Add { target, with } => {
            let s = m.api().add_share(&ShareReq { target, with })?;
            eprintln!("Shared {} with {}.", s.target(), s.with);
        }
        ShareCmd::List => {
            println!("{:<30} WITH", "SHARED");
            for s in m.api().shares()? {
                println!("{:<30} {}", s.target(), s.with);
            }
        }
        ShareCmd::Remove { target, with } => {
            let n = m.api().remove_share(&ShareReq {
                target: target.clone(),
                with: with.clone(),
            })?;
            eprintln!("No longer sharing {target} with {with} ({n} removed).");
        }
    }
    Ok(())
}

pub fn invite(g: &Globals, c: InviteCmd) -> anyhow::Result<()> {
    let m = Manager::open(g)?;
    match c {
        InviteCmd::Create {
            person,
            expires,
            uses,
        } => {
            let i = m.api().create_invite(&NewInvite {
                person,
                expires: Some(expires),
                uses: Some(uses),
            })?;
            println!("{}", i.link);
            println!("code: {}", i.code);
            eprintln!(
                "Invite {} for {}: {} use(s), valid until {}. Open the link on the device, or run \
                 `cloudpc connect --invite '{}'` on a Linux device. The code is shown only now.",
                i.invite.id,
                i.invite.person,
                i.invite.uses_left,
                when(i.invite.expires_at),
                i.link
            );
        }
        InviteCmd::List => {
            println!(
                "{:<5} {:<20} {:<6} {:<22} STATE",
                "ID", "PERSON", "USES", "EXPIRES"
            );
            let now = crate::store::unix_now();
            for i in m.api().invites()? {
                let state = if i.revoked {
                    "revoked"
                } else if i.expires_at <= now {
                    "expired"
                } else if i.uses_left == 0 {
                    "used"
                } else {
                    "open"
                };
                println!(
                    "{:<5} {:<20} {:<6} {:<22} {state}",
                    i.id,
                    i.person,
                    i.uses_left,
                    when(i.expires_at)
                );
            }
        }
        InviteCmd::Revoke { id } => {
            m.api().revoke_invite(id)?;
            eprintln!("Invite {id} revoked: it is refused from now on.");
        }
    }
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum LinkCmd {
    /// Make a one-time code (a link) for another Cloud PC's owner to link with this one.
    Create {
        /// This side's name for the link: the other side's devices become DEVICE.NAME.<zone>.
        #[arg(long)]
        name: String,
    },
    /// Link with the Cloud PC whose code this is (its owner ran `cloudpc link create`).
    Accept {
        code: String,
        /// This side's name for the link (default: the other hub's host name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the links and what each exports here.
    List,
    /// Export a device (or ports of it) to a linked Cloud PC: `link export bob nas:445`.
    Export { link: String, target: String },
    /// Stop exporting a device to a linked Cloud PC.
    Unexport { link: String, target: String },
    /// Cut a link at once (on both sides).
    Remove { name: String },
}

pub fn link(g: &Globals, c: LinkCmd) -> anyhow::Result<()> {
    let m = Manager::open(g)?;
    match c {
        LinkCmd::Create { name } => {
            let l = m.api().create_link(Some(&name))?;
            println!("{}", l.code);
            eprintln!(
                "Give this one-time code to the other owner; they run `cloudpc link accept '<code>'` on \
                 their Cloud PC. It is good for a day. Then `cloudpc link export {} DEVICE[:PORTS]` \
                 shares a device with them.",
                l.name
            );
        }
        LinkCmd::Accept { code, name } => {
            let l = m.api().accept_link(&code, name.as_deref())?;
            eprintln!(
                "Linked as {:?}: its devices appear here in {} once exported.",
                l.name, l.import_prefix
            );
        }
        LinkCmd::List => {
            println!(
                "{:<16} {:<10} {:<18} {:<30} IMPORTED",
                "LINK", "HANDSHAKE", "RANGE", "PEER"
            );
            for l in m.api().links()? {
                let imported: Vec<String> = l
                    .imported
                    .iter()
                    .map(|(n, a)| format!("{n}.{} {a}", l.name))
                    .collect();
                let hs = match (l.up, l.handshake_secs_ago) {
                    (false, _) => "pending".to_string(),
                    (true, Some(s)) => format!("{s}s ago"),
                    (true, None) => "none".to_string(),
                };
                println!(
                    "{:<16} {:<10} {:<18} {:<30} {}",
                    l.name,
                    hs,
                    l.import_prefix,
                    l.peer,
                    imported.join(", ")
                );
            }
        }
        LinkCmd::Export { link, target } => {
            let s = m.api().add_share(&ShareReq { target, with: link })?;
            eprintln!("Exported {} to {}.", s.target(), s.with);
        }
        LinkCmd::Unexport { link, target } => {
            m.api().remove_share(&ShareReq {
                target: target.clone(),
                with: link.clone(),
            })?;
            eprintln!("No longer exporting {target} to {link}.");
        }
        LinkCmd::Remove { name } => {
            m.api().remove_link(&name)?;
            eprintln!("Link {name} cut.");
        }
    }
    Ok(())
}
