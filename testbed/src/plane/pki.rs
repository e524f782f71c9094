//! Certificates for a throwaway control plane: one CA signs the apiserver's serving
//! certificate and an admin client certificate in `system:masters`.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

pub struct Pki {
    pub ca_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// Key pair that signs and verifies service-account tokens.
    pub service_account_key_pem: String,
    pub service_account_public_pem: String,
}

impl Pki {
    pub fn generate() -> Result<Pki, rcgen::Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "eagle-eye-testbed-ca");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        // 10.0.0.1: the `kubernetes` Service, by which pods on the node reach the API server.
        let mut serving = CertificateParams::new(vec![
            "127.0.0.1".into(),
            "localhost".into(),
            "10.0.0.1".into(),
        ])?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving.signed_by(&serving_key, &ca)?;

        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin.distinguished_name.push(DnType::CommonName, "admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_key = KeyPair::generate()?;
        let admin_cert = admin.signed_by(&admin_key, &ca)?;

        let sa = KeyPair::generate()?;
        Ok(Pki {
            ca_pem: ca.pem(),
            serving_cert_pem: serving_cert.pem(),
            serving_key_pem: serving_key.serialize_pem(),
            admin_cert_pem: admin_cert.pem(),
            admin_key_pem: admin_key.serialize_pem(),
            service_account_key_pem: sa.serialize_pem(),
            service_account_public_pem: sa.public_key_pem(),
        })
    }
}
