//! The verifier accepts the program, every map is pinned under the pin directory, and a
//! second load adopts the pinned maps with their contents instead of replacing them.

#![cfg(test)]

use lb_common::{BACKEND_LIVE, Backend, maps};
use xlb::dataplane::{Dataplane, LoadOptions};
use xlb_lab::{PinDir, require_root};

#[test]
fn program_loads_pins_every_map_and_reload_adopts_them() {
    if !require_root("program_loads_pins_every_map_and_reload_adopts_them") {
        return;
    }
    let pins = PinDir::new("load");
    let opts = LoadOptions {
        pin_dir: pins.path().into(),
        flow_capacity: 1024,
        ..LoadOptions::default()
    };
    let mut first = Dataplane::load(&opts).expect("verifier accepts the program");
    for name in maps::ALL {
        assert!(pins.path().join(name).exists(), "{name} is not pinned");
    }
    let backend = Backend {
        mac: [2, 0, 0, 0, 0, 9],
        flags: BACKEND_LIVE,
        vip_id: 1,
        ..Backend::default()
    };
    first.maps().put_backend(7, &backend).unwrap();
    first.maps().set_hash_seed(42).unwrap();
    drop(first);

    let mut second = Dataplane::load(&opts).expect("reload against existing pins");
    assert_eq!(
        second.maps().backend(7).unwrap(),
        backend,
        "pinned backend lost on reload"
    );
    assert_eq!(second.maps().config().unwrap().hash_seed, 42);
}
