//! The container image's build contract. No Docker engine runs here, so what can be proved
//! is proved: the Dockerfile builds with exactly the command CI runs outside Docker, into a
//! distroless image that runs as the user the chart expects. `hack/lint-dockerfile.sh` lints it.

use std::path::Path;

use super::chart::CHART;

#[test]
fn the_dockerfile_builds_with_the_command_ci_runs_into_a_nonroot_distroless_image() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let build = "cargo build --release --locked --bin eagle-eye-operator";
    assert!(
        dockerfile.contains(build),
        "the Dockerfile must run `{build}`"
    );
    let ci = std::fs::read_to_string(root.join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == build),
        ".ci/run must run `{build}` as the image does"
    );
    // Cargo refuses to build a workspace with a member missing from the build context: every
    // member is copied and let through .dockerignore (sim/ once was not).
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members: Vec<&str> = manifest
        .lines()
        .find_map(|l| l.strip_prefix("members = ["))
        .expect("Cargo.toml lists its workspace members on one line")
        .split('"')
        .skip(1)
        .step_by(2)
        .collect();
    assert!(members.contains(&"testbed"), "{members:?}");
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for member in members {
        assert!(
            dockerfile
                .lines()
                .any(|l| l == format!("COPY {member} ./{member}")),
            "the Dockerfile must copy the workspace member {member}/"
        );
        assert!(
            ignore.lines().any(|l| l == format!("!{member}/")),
            ".dockerignore must let {member}/ into the build context"
        );
    }
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        stages.last(),
        Some(&"FROM gcr.io/distroless/cc-debian12:nonroot")
    );
    let after_last_from = dockerfile.rsplit("\nFROM ").next().unwrap();
    for line in [
        "USER 65532:65532",
        r#"ENTRYPOINT ["/eagle-eye-operator"]"#,
        r#"CMD ["run"]"#,
    ] {
        assert!(
            after_last_from.lines().any(|l| l == line),
            "final stage lacks {line}"
        );
    }
    // The chart runs the image as the same user.
    let deployment =
        std::fs::read_to_string(Path::new(CHART).join("templates/deployment.yaml")).unwrap();
    assert!(deployment.contains("runAsUser: 65532"));
}
