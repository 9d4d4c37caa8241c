//! Registering, changing and removing devices: the checks, the one store transaction, the
//! config (and QR code) of a new device, and the change put in force before the call returns.

use super::{bad, check_device_name, internal, Control};
use crate::api::{ApiError, DeviceAdded, NewDevice};
use crate::enroll;
use crate::store::{Device, DevicePatch};

impl Control {
    pub(super) fn device_add(&self, req: &NewDevice) -> Result<DeviceAdded, ApiError> {
        // Everything that can refuse runs before the store is touched.
        check_device_name(&req.name)?;
        if let Some(g) = &req.group {
            self.check_group(g)?;
        }
        if req.qr && req.public_key.is_some() {
            return Err(bad(
                "a QR code is for importing a complete tunnel into a phone app, which needs the private key; \
                 with a public key of its own the device keeps its private key: leave out the QR code",
            ));
        }
        self.enroll.check().map_err(|e| bad(e.to_string()))?;
        let key =
            enroll::new_device_key(req.public_key.as_deref()).map_err(|e| bad(e.to_string()))?;
        let mut store = self.store.lock();
        let person = match &req.person {
            Some(p) => Some(self.find_person(&store, p)?),
            None => None,
        };
        // A guest without internet gets a split tunnel: a full one would leave it offline.
        let split = req.split
            || person
                .as_ref()
                .is_some_and(|p| p.role == crate::store::Role::Guest && !p.internet_allowed());
        let patch = DevicePatch {
            group: req.group.clone().map(Some),
            owner: req.owner.then_some(true),
            admin: req.admin.then_some(true),
            no_log: req.no_log.then_some(true),
            name: None,
            person: person.map(|p| Some(p.name)),
        };
        let device = store.add_device_with(&req.name, &key.public, split, &self.overlay, &patch)?;
        let rendered = self
            .enroll
            .device_config(&device, key.made.as_ref())
            .map_err(|e| bad(e.to_string()))
            .and_then(|config| {
                let qr = req.qr.then(|| enroll::qr::svg(&config)).transpose();
                Ok((config, qr.map_err(internal)?))
            });
        let (config, qr_svg) = match rendered {
            Ok(r) => r,
            Err(e) => {
                // Never leave a device registered whose config (and private key) was not shown.
                let _ = store.remove_device(&device.name);
                return Err(e);
            }
        };
        self.apply_devices(&store)?;
        Ok(DeviceAdded {
            device,
            config,
            private_key_included: key.made.is_some(),
            qr_svg,
        })
    }

    pub(super) fn device_update(
        &self,
        name: &str,
        patch: &DevicePatch,
    ) -> Result<Device, ApiError> {
        if *patch == DevicePatch::default() {
            return Err(bad(
                "nothing to change: give name, group, owner, admin or no_log",
            ));
        }
        if let Some(n) = &patch.name {
            check_device_name(n)?;
        }
        if let Some(Some(g)) = &patch.group {
            self.check_group(g)?;
        }
        let store = self.store.lock();
        if let Some(Some(p)) = &patch.person {
            self.find_person(&store, p)?;
        }
        let d = store.update_device(name, patch)?;
        self.apply_devices(&store)?;
        Ok(d)
    }

    pub(super) fn device_remove(&self, name: &str) -> Result<String, ApiError> {
        let store = self.store.lock();
        let d = store.device(name)?;
        store.remove_device(&d.name)?;
        self.apply_devices(&store)?;
        Ok(d.name)
    }
}
