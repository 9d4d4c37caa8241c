//! People (members and guests; the owner is implicit), what is shared with them, and the
//! invites that register a device for one of them. An invite is kept as a SHA-256 of its
//! code only (the code is 80 random bits: a plain hash cannot be turned back).

use rusqlite::{params, OptionalExtension};

use super::{begin_write, unix_now, Store, StoreError};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS people (
    name TEXT PRIMARY KEY COLLATE NOCASE,
    role TEXT NOT NULL CHECK (role IN ('member', 'guest', 'link')),
    internet INTEGER,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shares (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL COLLATE NOCASE,
    ports TEXT NOT NULL DEFAULT '',
    with_kind TEXT NOT NULL CHECK (with_kind IN ('person', 'group')),
    with_name TEXT NOT NULL COLLATE NOCASE,
    UNIQUE (device, ports, with_kind, with_name)
);
CREATE TABLE IF NOT EXISTS invites (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash BLOB NOT NULL UNIQUE,
    person TEXT NOT NULL COLLATE NOCASE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    uses_left INTEGER NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
";

/// What a person's devices may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Family or team: on the whole network, its DNS and (by default) its internet.
    Member,
    /// Only what is shared with them; no internet unless allowed.
    Guest,
    /// Another Cloud PC linked to this one (`cloudpc link`): its devices reach what is
    /// exported to it, like a guest's; never the internet.
    Link,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Guest => "guest",
            Role::Link => "link",
        }
    }

    /// Guests and linked Cloud PCs: only what is shared with them, quarantined.
    pub fn is_outsider(self) -> bool {
        matches!(self, Role::Guest | Role::Link)
    }

    /// Reads `member` or `guest`.
    pub fn parse(s: &str) -> Result<Role, String> {
        match s.to_ascii_lowercase().as_str() {
            "member" => Ok(Role::Member),
            "guest" => Ok(Role::Guest),
            "link" => Ok(Role::Link),
            _ => Err(format!("{s:?} is not a role: use member or guest")),
        }
    }
}

/// One person.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Person {
    pub name: String,
    pub role: Role,
    /// May use the Cloud PC's internet; `None` = the role's default (members yes, guests no).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet: Option<bool>,
    /// Unix seconds.
    pub created_at: i64,
}

impl Person {
    /// Whether this person's devices use the Cloud PC's internet.
    pub fn internet_allowed(&self) -> bool {
        match self.role {
            Role::Link => false,
            r => self.internet.unwrap_or(r == Role::Member),
        }
    }
}

/// Whom a share is for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "name")]
pub enum ShareWith {
    Person(String),
    Group(String),
}

impl ShareWith {
    /// Reads `alice` or `group:team`.
    pub fn parse(s: &str) -> ShareWith {
        match s.strip_prefix("group:") {
            Some(g) => ShareWith::Group(g.to_string()),
            None => ShareWith::Person(s.to_string()),
        }
    }

    fn parts(&self) -> (&'static str, &str) {
        match self {
            ShareWith::Person(n) => ("person", n),
            ShareWith::Group(n) => ("group", n),
        }
    }
}

impl std::fmt::Display for ShareWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShareWith::Person(n) => f.write_str(n),
            ShareWith::Group(n) => write!(f, "group:{n}"),
        }
    }
}

/// A device (and maybe ports of it) shared with a person or a group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Share {
    pub id: i64,
    pub device: String,
    /// `445`, `8000-8100`; empty = every port.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ports: String,
    pub with: ShareWith,
}

impl Share {
    /// `nas:445 → alice`, the way the CLI takes it back.
    pub fn target(&self) -> String {
        if self.ports.is_empty() {
            self.device.clone()
        } else {
            format!("{}:{}", self.device, self.ports)
        }
    }
}

/// An invite as listed (never its code).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Invite {
    pub id: i64,
    pub person: String,
    /// Unix seconds.
    pub created_at: i64,
    pub expires_at: i64,
    pub uses_left: u32,
    pub revoked: bool,
}

/// Why an invite was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteRefusal {
    Unknown,
    Revoked,
    Expired,
    UsedUp,
}

impl Store {
    /// Every person, by name.
    pub fn people(&self) -> Result<Vec<Person>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT name, role, internet, created_at FROM people ORDER BY name")
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| {
                let role: String = r.get(1)?;
                Ok(Person {
                    name: r.get(0)?,
                    role: Role::parse(&role).unwrap_or(Role::Guest),
                    internet: r.get(2)?,
                    created_at: r.get(3)?,
                })
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
    }

    /// One person by name (any case).
    pub fn person(&self, name: &str) -> Result<Option<Person>, StoreError> {
        Ok(self
            .people()?
            .into_iter()
            .find(|p| p.name.eq_ignore_ascii_case(name)))
    }

    /// Adds a person; false when the name is taken.
    pub fn add_person(&self, p: &Person) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "INSERT OR IGNORE INTO people(name, role, internet, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![p.name, p.role.as_str(), p.internet, p.created_at],
            )
            .map(|n| n > 0)
            .map_err(|e| self.db(e))
    }

    /// Changes a person's role and internet setting.
    pub fn update_person(&self, p: &Person) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE people SET role = ?2, internet = ?3 WHERE name = ?1",
                params![p.name, p.role.as_str(), p.internet],
            )
            .map(|_| ())
            .map_err(|e| self.db(e))
    }

    /// Removes a person with all their devices, the shares with them and their invites, in
    /// one transaction. Returns the names of the devices removed.
    pub fn remove_person(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let path = self.path.clone();
        let db = |cause| StoreError::Db {
            path: path.clone(),
            cause,
        };
        let tx = begin_write(&self.conn).map_err(db)?;
        let devices: Vec<String> = {
            let mut st = tx
                .prepare("SELECT name FROM devices WHERE person = ?1 ORDER BY name")
                .map_err(db)?;
            let rows = st.query_map([name], |r| r.get(0)).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)?
        };
        for d in &devices {
            tx.execute("DELETE FROM shares WHERE device = ?1", [d])
                .map_err(db)?;
        }
        tx.execute("DELETE FROM devices WHERE person = ?1", [name])
            .map_err(db)?;
        tx.execute(
            "DELETE FROM shares WHERE with_kind = 'person' AND with_name = ?1",
            [name],
        )
        .map_err(db)?;
        tx.execute("DELETE FROM invites WHERE person = ?1", [name])
            .map_err(db)?;
        tx.execute("DELETE FROM people WHERE name = ?1", [name])
            .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(devices)
    }

    /// Every share, oldest first.
    pub fn shares(&self) -> Result<Vec<Share>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT id, device, ports, with_kind, with_name FROM shares ORDER BY id")
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| {
                let kind: String = r.get(3)?;
                let name: String = r.get(4)?;
                Ok(Share {
                    id: r.get(0)?,
                    device: r.get(1)?,
                    ports: r.get(2)?,
                    with: if kind == "group" {
                        ShareWith::Group(name)
                    } else {
                        ShareWith::Person(name)
                    },
                })
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
    }

    /// Adds a share (idempotent); returns it.
    pub fn add_share(
        &self,
        device: &str,
        ports: &str,
        with: &ShareWith,
    ) -> Result<Share, StoreError> {
        let (kind, name) = with.parts();
        self.conn
            .execute(
                "INSERT OR IGNORE INTO shares(device, ports, with_kind, with_name) VALUES (?1, ?2, ?3, ?4)",
                params![device, ports, kind, name],
            )
            .map_err(|e| self.db(e))?;
        let id: i64 = self
            .conn
            .query_row(
                "SELECT id FROM shares WHERE device = ?1 AND ports = ?2 AND with_kind = ?3 AND with_name = ?4",
                params![device, ports, kind, name],
                |r| r.get(0),
            )
            .map_err(|e| self.db(e))?;
        Ok(Share {
            id,
            device: device.to_string(),
            ports: ports.to_string(),
            with: with.clone(),
        })
    }

    /// Removes the shares of `device` (of `ports` when given) with `with`; returns how many.
    pub fn remove_share(
        &self,
        device: &str,
        ports: Option<&str>,
        with: &ShareWith,
    ) -> Result<usize, StoreError> {
        let (kind, name) = with.parts();
        let n = match ports {
            Some(p) => self.conn.execute(
                "DELETE FROM shares WHERE device = ?1 AND ports = ?2 AND with_kind = ?3 AND with_name = ?4",
                params![device, p, kind, name],
            ),
            None => self.conn.execute(
                "DELETE FROM shares WHERE device = ?1 AND with_kind = ?2 AND with_name = ?3",
                params![device, kind, name],
            ),
        };
        n.map_err(|e| self.db(e))
    }

    /// Stores a new invite by the hash of its code.
    pub fn add_invite(
        &self,
        hash: &[u8; 32],
        person: &str,
        expires_at: i64,
        uses: u32,
    ) -> Result<Invite, StoreError> {
        let now = unix_now();
        self.conn
            .execute(
                "INSERT INTO invites(hash, person, created_at, expires_at, uses_left) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![&hash[..], person, now, expires_at, uses],
            )
            .map_err(|e| self.db(e))?;
        Ok(Invite {
            id: self.conn.last_insert_rowid(),
            person: person.to_string(),
            created_at: now,
            expires_at,
            uses_left: uses,
            revoked: false,
        })
    }

    /// Every invite, oldest first.
    pub fn invites(&self) -> Result<Vec<Invite>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, person, created_at, expires_at, uses_left, revoked FROM invites ORDER BY id",
            )
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| {
                Ok(Invite {
                    id: r.get(0)?,
                    person: r.get(1)?,
                    created_at: r.get(2)?,
                    expires_at: r.get(3)?,
                    uses_left: r.get(4)?,
                    revoked: r.get(5)?,
                })
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
    }

    /// Revokes an invite; false when there is none with that id.
    pub fn revoke_invite(&self, id: i64) -> Result<bool, StoreError> {
        self.conn
            .execute("UPDATE invites SET revoked = 1 WHERE id = ?1", [id])
            .map(|n| n > 0)
            .map_err(|e| self.db(e))
    }

    /// Takes one use of the invite with this code hash, in one transaction: two devices
    /// redeeming the last use at once get one yes and one no. Returns the invite's person.
    pub fn take_invite(
        &self,
        hash: &[u8; 32],
        now: i64,
    ) -> Result<Result<(i64, String), InviteRefusal>, StoreError> {
        let path = self.path.clone();
        let db = |cause| StoreError::Db {
            path: path.clone(),
            cause,
        };
        let tx = begin_write(&self.conn).map_err(db)?;
        let row: Option<(i64, String, i64, u32, bool)> = tx
            .query_row(
                "SELECT id, person, expires_at, uses_left, revoked FROM invites WHERE hash = ?1",
                [&hash[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(db)?;
        let Some((id, person, expires_at, uses_left, revoked)) = row else {
            return Ok(Err(InviteRefusal::Unknown));
        };
        if revoked {
            return Ok(Err(InviteRefusal::Revoked));
        }
        if now >= expires_at {
            return Ok(Err(InviteRefusal::Expired));
        }
        if uses_left == 0 {
            return Ok(Err(InviteRefusal::UsedUp));
        }
        tx.execute(
            "UPDATE invites SET uses_left = uses_left - 1 WHERE id = ?1",
            [id],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Ok((id, person)))
    }

    /// Gives back a use taken by [`Store::take_invite`] (the device could not be registered).
    pub fn give_back_invite(&self, id: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE invites SET uses_left = uses_left + 1 WHERE id = ?1",
                [id],
            )
            .map(|_| ())
            .map_err(|e| self.db(e))
    }
}

/// Columns added for people: a device's person.
pub(super) fn migrate(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    let has: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('devices') WHERE name = 'person'")?
        .exists([])?;
    if !has {
        conn.execute_batch("ALTER TABLE devices ADD COLUMN person TEXT COLLATE NOCASE;")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        (dir, s)
    }

    #[test]
    fn an_invite_gives_its_uses_and_then_refuses() {
        let (_d, s) = store();
        let h = [7u8; 32];
        s.add_invite(&h, "alice", 1_000, 2).unwrap();
        assert_eq!(s.take_invite(&h, 10).unwrap().unwrap().1, "alice");
        assert!(s.take_invite(&h, 10).unwrap().is_ok());
        assert_eq!(s.take_invite(&h, 10).unwrap(), Err(InviteRefusal::UsedUp));
        assert_eq!(
            s.take_invite(&[8u8; 32], 10).unwrap(),
            Err(InviteRefusal::Unknown)
        );
        let h2 = [9u8; 32];
        let i = s.add_invite(&h2, "bob", 1_000, 5).unwrap();
        assert_eq!(
            s.take_invite(&h2, 1_000).unwrap(),
            Err(InviteRefusal::Expired)
        );
        assert!(s.revoke_invite(i.id).unwrap());
        assert_eq!(s.take_invite(&h2, 10).unwrap(), Err(InviteRefusal::Revoked));
    }

    #[test]
    fn removing_a_person_takes_their_devices_shares_and_invites() {
        let (_d, mut s) = store();
        let ov = super::super::Overlay {
            v4: "100.96.0.0/16".parse().unwrap(),
            v6: "fd00::/48".parse().unwrap(),
        };
        let p = Person {
            name: "alice".into(),
            role: Role::Guest,
            internet: None,
            created_at: 1,
        };
        assert!(s.add_person(&p).unwrap());
        assert!(!s.add_person(&p).unwrap());
        let patch = super::super::DevicePatch {
            person: Some(Some("alice".into())),
            ..Default::default()
        };
        let key = |b: u8| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode([b; 32])
        };
        s.add_device_with("alice-phone", &key(1), false, &ov, &patch)
            .unwrap();
        s.add_device("nas", &key(2), false, &ov).unwrap();
        s.add_share("nas", "445", &ShareWith::Person("alice".into()))
            .unwrap();
        s.add_share("alice-phone", "", &ShareWith::Group("team".into()))
            .unwrap();
        s.add_invite(&[1u8; 32], "alice", 100, 1).unwrap();
        assert_eq!(s.remove_person("alice").unwrap(), vec!["alice-phone"]);
        assert!(s.shares().unwrap().is_empty());
        assert!(s.invites().unwrap().is_empty());
        assert_eq!(s.devices().unwrap().len(), 1);
        assert!(s.person("alice").unwrap().is_none());
    }
}
