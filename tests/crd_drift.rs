//! `crds/` is generated from the Rust types; this fails when the committed file is stale.

#[test]
fn committed_crd_matches_the_rust_types() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/eagleeyecredentials.yaml");
    let committed = std::fs::read_to_string(&path).expect("crds/eagleeyecredentials.yaml exists");
    assert!(
        committed == eagle_eye_operator::cli::crd_yaml(),
        "crds/eagleeyecredentials.yaml is stale: run `cargo run -- crd > crds/eagleeyecredentials.yaml`"
    );
}
