//! Every sample config in `config/` passes `m3query check-config`, so none can rot.

mod common;

use std::path::Path;

#[test]
fn every_sample_config_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config/") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yml") {
            continue;
        }
        let out = std::process::Command::new(common::bin())
            .arg("check-config")
            .arg(&path)
            .output()
            .expect("run check-config");
        assert!(
            out.status.success(),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 1, "no configs found in {}", dir.display());
}

#[test]
fn reference_config_is_the_default() {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/m3query.yml");
    let text = std::fs::read_to_string(reference).expect("config/m3query.yml");
    let (code, documented, err) = common::check_config(&text, &[]);
    assert_eq!(code, 0, "{err}");
    let (code, default, err) = common::check_config("", &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        documented, default,
        "config/m3query.yml must show the built-in defaults"
    );
}
