//! The CRD is generated from the Rust types into `crds/` and into the chart's own copy; this
//! fails when either committed file is stale.

#[test]
fn committed_crds_match_the_rust_types_in_crds_and_in_the_chart() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let generated = eagle_eye_operator::cli::crd_yaml();
    for file in [
        "crds/eagleeyecredentials.yaml",
        "charts/eagle-eye-operator/files/eagleeyecredentials.yaml",
    ] {
        let path = root.join(file);
        assert!(
            !path.symlink_metadata().unwrap().is_symlink(),
            "{file} must be a real file: GitOps tools that take the chart from git skip symlinks"
        );
        let committed = std::fs::read_to_string(&path).unwrap();
        assert!(
            committed == generated,
            "{file} is stale: run hack/generate-crds.sh"
        );
    }
}
