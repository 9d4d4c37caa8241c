//! The devices table: registering a device at the next free overlay addresses, listing,
//! renaming and changing its flags, removing it.

use std::net::{Ipv4Addr, Ipv6Addr};

use rusqlite::{params, OptionalExtension};

use super::{begin_write, unix_now, Overlay, Store, StoreError};

/// One registered device. The hub never stores a device private key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Device {
    pub name: String,
    /// WireGuard public key, base64.
    pub public_key: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Split tunnel: only the overlay is routed through the hub.
    pub split: bool,
    /// Policy group (issue 4); `None` = default policy.
    pub group: Option<String>,
    /// May pull the encrypted query log.
    pub owner: bool,
    /// Never logged, even with the query log on.
    pub no_log: bool,
    /// May use the management API over the private network (owners are admins too).
    pub admin: bool,
    /// The person the device belongs to (`cloudpc person`); `None` = the owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub person: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
}

impl Device {
    /// True when the device may use the management API (admin or owner).
    pub fn is_admin(&self) -> bool {
        self.admin || self.owner
    }
}

impl Store {
    /// Registers a device at the next free overlay addresses.
    pub fn add_device(
        &mut self,
        name: &str,
        public_key: &str,
        split: bool,
        overlay: &Overlay,
    ) -> Result<Device, StoreError> {
        let path = self.path.clone();
        let db = |cause| StoreError::Db {
            path: path.clone(),
            cause,
        };
        let tx = begin_write(&self.conn).map_err(db)?;
        let dup: Option<String> = tx
            .query_row("SELECT name FROM devices WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(db)?;
        if dup.is_some() {
            return Err(StoreError::DuplicateName(name.to_string()));
        }
        let dup_key: Option<String> = tx
            .query_row(
                "SELECT name FROM devices WHERE public_key = ?1",
                [public_key],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if let Some(other) = dup_key {
            return Err(StoreError::DuplicateKey(other));
        }
        let used: Vec<u32> = {
            let mut st = tx
                .prepare("SELECT addr_index FROM devices ORDER BY addr_index")
                .map_err(db)?;
            let rows = st.query_map([], |r| r.get::<_, u32>(0)).map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)?
        };
        // Index 0 is the network, 1 the hub; the last index of the IPv4 range is broadcast and
        // the one before it is the NAT64 pool address (`hub::nat64_pool_v4`).
        let max = (1u64 << (32 - overlay.v4.prefix_len())) - 3;
        let mut index = 2u32;
        for u in used {
            if u == index {
                index += 1;
            } else if u > index {
                break;
            }
        }
        if u64::from(index) > max {
            return Err(StoreError::Full(overlay.v4));
        }
        let (v4, v6) = overlay.addrs(index);
        let now = unix_now();
        tx.execute(
            "INSERT INTO devices(name, public_key, ipv4, ipv6, addr_index, split, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                name,
                public_key,
                v4.to_string(),
                v6.to_string(),
                index,
                split,
                now
            ],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(Device {
            name: name.to_string(),
            public_key: public_key.to_string(),
            ipv4: v4,
            ipv6: v6,
            split,
            group: None,
            owner: false,
            no_log: false,
            admin: false,
            person: None,
            created_at: now,
        })
    }

    /// All devices, by name.
    pub fn devices(&self) -> Result<Vec<Device>, StoreError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT name, public_key, ipv4, ipv6, split, grp, owner, no_log, created_at, admin,
                 person FROM devices ORDER BY name",
            )
            .map_err(|e| self.db(e))?;
        let rows = st
            .query_map([], |r| {
                let v4: String = r.get(2)?;
                let v6: String = r.get(3)?;
                Ok(Device {
                    name: r.get(0)?,
                    public_key: r.get(1)?,
                    ipv4: v4.parse().unwrap_or(Ipv4Addr::UNSPECIFIED),
                    ipv6: v6.parse().unwrap_or(Ipv6Addr::UNSPECIFIED),
                    split: r.get(4)?,
                    group: r.get(5)?,
                    owner: r.get(6)?,
                    no_log: r.get(7)?,
                    created_at: r.get(8)?,
                    admin: r.get(9)?,
                    person: r.get(10)?,
                })
            })
            .map_err(|e| self.db(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.db(e))
    }

    /// One device by name.
    pub fn device(&self, name: &str) -> Result<Device, StoreError> {
        self.devices()?
            .into_iter()
            .find(|d| d.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| StoreError::NoDevice(name.to_string()))
    }

    /// Removes a device (and what is shared of it); its key is refused from then on.
    pub fn remove_device(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path.clone();
        let db = |cause| StoreError::Db {
            path: path.clone(),
            cause,
        };
        let tx = begin_write(&self.conn).map_err(db)?;
        let n = tx
            .execute("DELETE FROM devices WHERE name = ?1", [name])
            .map_err(db)?;
        if n == 0 {
            return Err(StoreError::NoDevice(name.to_string()));
        }
        tx.execute("DELETE FROM shares WHERE device = ?1", [name])
            .map_err(db)?;
        tx.commit().map_err(db)
    }

    /// Changes a device in one transaction: rename, group, owner, admin and no-log flags
    /// (`None` leaves a field as it is). Returns the device as it is afterwards.
    pub fn update_device(&self, name: &str, patch: &DevicePatch) -> Result<Device, StoreError> {
        let path = self.path.clone();
        let db = |cause| StoreError::Db {
            path: path.clone(),
            cause,
        };
        let tx = begin_write(&self.conn).map_err(db)?;
        type Row = (String, Option<String>, bool, bool, bool, Option<String>);
        let current: Option<Row> = tx
            .query_row(
                "SELECT name, grp, owner, admin, no_log, person FROM devices WHERE name = ?1",
                [name],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()
            .map_err(db)?;
        let Some((old, grp, owner, admin, no_log, person)) = current else {
            return Err(StoreError::NoDevice(name.to_string()));
        };
        let new_name = patch.name.clone().unwrap_or_else(|| old.clone());
        if !new_name.eq_ignore_ascii_case(&old) {
            let taken: Option<String> = tx
                .query_row(
                    "SELECT name FROM devices WHERE name = ?1",
                    [&new_name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(db)?;
            if taken.is_some() {
                return Err(StoreError::DuplicateName(new_name));
            }
        }
        tx.execute(
            "UPDATE devices SET name = ?2, grp = ?3, owner = ?4, admin = ?5, no_log = ?6,
             person = ?7 WHERE name = ?1",
            params![
                old,
                new_name,
                patch.group.clone().unwrap_or(grp),
                patch.owner.unwrap_or(owner),
                patch.admin.unwrap_or(admin),
                patch.no_log.unwrap_or(no_log),
                patch.person.clone().unwrap_or(person),
            ],
        )
        .map_err(db)?;
        tx.execute(
            "UPDATE shares SET device = ?2 WHERE device = ?1",
            params![old, new_name],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
        self.device(&new_name)
    }

    /// Registers a device with its flags in one transaction (all or nothing).
    pub fn add_device_with(
        &mut self,
        name: &str,
        public_key: &str,
        split: bool,
        overlay: &Overlay,
        patch: &DevicePatch,
    ) -> Result<Device, StoreError> {
        let d = self.add_device(name, public_key, split, overlay)?;
        if *patch == DevicePatch::default() {
            return Ok(d);
        }
        match self.update_device(&d.name, patch) {
            Ok(d) => Ok(d),
            Err(e) => {
                // The second write failed (full disk, ...): take the first one back.
                let _ = self.remove_device(&d.name);
                Err(e)
            }
        }
    }

    /// Sets a device's group, owner and no-log flags (`None` leaves a field as it is).
    pub fn set_device(
        &self,
        name: &str,
        group: Option<Option<&str>>,
        owner: Option<bool>,
        no_log: Option<bool>,
    ) -> Result<(), StoreError> {
        let patch = DevicePatch {
            group: group.map(|g| g.map(str::to_string)),
            owner,
            no_log,
            ..DevicePatch::default()
        };
        self.update_device(name, &patch).map(|_| ())
    }
}

/// A change to a device; `None` fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    /// New name (a rename keeps the key and addresses).
    #[serde(default)]
    pub name: Option<String>,
    /// `Some(None)` = back to the default policy.
    #[serde(default, deserialize_with = "some_nullable")]
    pub group: Option<Option<String>>,
    #[serde(default)]
    pub owner: Option<bool>,
    #[serde(default)]
    pub admin: Option<bool>,
    #[serde(default)]
    pub no_log: Option<bool>,
    /// The person the device belongs to; `Some(None)` = the owner.
    #[serde(default, deserialize_with = "some_nullable")]
    pub person: Option<Option<String>>,
}

/// A present field, `null` included, is `Some(..)`; a missing one is `None` (via `default`).
fn some_nullable<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    use serde::Deserialize;
    Option::<String>::deserialize(d).map(Some)
}

/// A present field, `null` included, is `Some(..)` (an optional bool).
pub fn some_nullable_bool<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<bool>>, D::Error> {
    use serde::Deserialize;
    Option::<bool>::deserialize(d).map(Some)
}
