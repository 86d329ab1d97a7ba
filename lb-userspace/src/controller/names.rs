//! What the name maps say for a generation: every VIP id and backend id of the record,
//! with the names and addresses an operator knows them by. Pure.

use crate::{
    dataplane::names::{BackendName, VipName, text},
    history::Record,
};

/// The entries of `xlb_vip_name` and `xlb_be_name`, by id.
pub(super) struct Names {
    pub vips: Vec<(u32, VipName)>,
    pub backends: Vec<(u32, BackendName)>,
}

/// The name map entries for `record`.
pub(super) fn names_of(record: &Record) -> Names {
    let mut vips = Vec::new();
    let mut backends = Vec::new();
    for vip in &record.config.vips {
        let Some(&vip_id) = record.ids.vips.get(&vip.name) else {
            continue;
        };
        vips.push((
            vip_id,
            VipName {
                name: text(&vip.name),
                listen: text(&vip.endpoint()),
                forwarding: text(vip.forwarding.as_str()),
            },
        ));
        for b in &vip.backends {
            if let Some(id) = record.ids.backend(&vip.name, &b.name) {
                backends.push((
                    id,
                    BackendName {
                        backend: text(&b.name),
                        vip: text(&vip.name),
                        address: text(&b.address),
                        vip_id,
                    },
                ));
            }
        }
    }
    Names { vips, backends }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::fixture,
        history::{Ids, Source},
    };

    #[test]
    fn every_id_of_the_record_is_named() {
        let mut config = crate::config::Config::default();
        let mut web = fixture::vip("web", &[("b1", 1), ("b2", 1)]);
        web.address = "2001:db8::100".into();
        web.backends[1].address = "2001:db8::12".into();
        config.vips.push(web);
        let mut ids = Ids::default();
        ids.vips.insert("web".into(), 3);
        ids.backends.insert(Ids::backend_key("web", "b1"), 7);
        ids.backends.insert(Ids::backend_key("web", "b2"), 9);
        let mut record = Record::fixture(1, Source::Rollback { to: 0 }, config);
        record.ids = ids;
        let Names { vips, backends } = names_of(&record);
        let vip = &vips[..];
        assert_eq!(vip.len(), 1);
        assert_eq!(vip[0].0, 3);
        assert!(vip[0].1.name.starts_with(b"web\0"));
        assert!(vip[0].1.listen.starts_with(b"[2001:db8::100]:80/tcp\0"));
        assert!(vip[0].1.forwarding.starts_with(b"l2-dsr\0"));
        let ids: Vec<u32> = backends.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [7, 9]);
        let b2 = &backends[1].1;
        assert!(b2.backend.starts_with(b"b2\0"));
        assert!(b2.vip.starts_with(b"web\0"));
        assert!(b2.address.starts_with(b"2001:db8::12\0"));
        assert_eq!(b2.vip_id, 3);
    }
}
