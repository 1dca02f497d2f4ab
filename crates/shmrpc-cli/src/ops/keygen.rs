//! `shmrpc keygen --out DIR`: everything a TCP server and its clients need to talk over
//! mutual TLS with a token: a private CA, a server and a client certificate signed by it,
//! and a token. For trying the remote transport and for small deployments; a site with its
//! own PKI uses its own certificates instead.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use shmrpc::Token;

/// Arguments of `shmrpc keygen`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Writes into DIR (created, mode 0700, if missing; existing files are never \
overwritten):
  ca.pem, ca.key          a private CA (keep ca.key secret: it signs certificates)
  server.pem, server.key  the server's certificate (for the --name names) and key
  client.pem, client.key  a client certificate for mutual TLS, signed by the CA
  token                   a token clients must prove they know (mode 0600)
and prints the `shmrpc serve --tcp` and `shmrpc call --tcp` command lines that use them."
)]
pub struct KeygenArgs {
    /// The directory to write into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// A DNS name or IP address the server's certificate is valid for (repeat for more;
    /// default: localhost and 127.0.0.1). Clients check it with --server-name.
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// How many days the certificates are valid.
    #[arg(long, value_name = "N", default_value_t = 365,
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,
}

/// The files written, in order, with what each is.
const FILES: [(&str, &str); 7] = [
    (
        "ca.pem",
        "CA certificate (--client-ca for serve, --ca for call)",
    ),
    (
        "ca.key",
        "CA private key: keep it secret, it signs certificates",
    ),
    ("server.pem", "server certificate (--cert for serve)"),
    ("server.key", "server private key (--key for serve)"),
    ("client.pem", "client certificate (--cert for call)"),
    ("client.key", "client private key (--key for call)"),
    ("token", "token (--token-file for both)"),
];

/// Writes the files and prints how to use them.
///
/// # Errors
/// A file that exists already (nothing is written then), a directory or file that cannot
/// be created, or a name that cannot go in a certificate.
pub fn run(args: &KeygenArgs) -> anyhow::Result<()> {
    let names = if args.names.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        args.names.clone()
    };
    if !args.out.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&args.out)
            .with_context(|| format!("cannot create {}", args.out.display()))?;
    }
    let dir = args
        .out
        .canonicalize()
        .with_context(|| format!("--out {}", args.out.display()))?;
    // Refuse before writing anything, so a refused run leaves the directory as it was.
    let existing: Vec<String> = FILES
        .iter()
        .map(|(f, _)| dir.join(f))
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        bail!(
            "refusing to overwrite {} (choose another --out, or remove them)",
            existing.join(", ")
        );
    }
    let set = generate(&names, args.days)?;
    write_new(&dir.join("ca.pem"), &set.ca_pem, 0o644)?;
    write_new(&dir.join("ca.key"), &set.ca_key, 0o600)?;
    write_new(&dir.join("server.pem"), &set.server_pem, 0o644)?;
    write_new(&dir.join("server.key"), &set.server_key, 0o600)?;
    write_new(&dir.join("client.pem"), &set.client_pem, 0o644)?;
    write_new(&dir.join("client.key"), &set.client_key, 0o600)?;
    let token = dir.join("token");
    Token::generate()
        .context("cannot make a token")?
        .write_new(&token)
        .context("cannot write the token")?;

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "wrote into {} (valid {} days):",
        dir.display(),
        args.days
    )?;
    for (f, what) in FILES {
        writeln!(out, "  {f:<11} {what}")?;
    }
    let d = |f: &str| quote(&dir.join(f));
    writeln!(
        out,
        "\nserve (mutual TLS and the token; replace the address):"
    )?;
    writeln!(
        out,
        "  shmrpc serve --tcp 127.0.0.1:7000 --cert {} --key {} --client-ca {} --token-file {}",
        d("server.pem"),
        d("server.key"),
        d("ca.pem"),
        d("token")
    )?;
    writeln!(out, "call:")?;
    writeln!(
        out,
        "  shmrpc call --tcp 127.0.0.1:7000 --ca {} --server-name {} --cert {} --key {} --token-file {} echo '\"hi\"'",
        d("ca.pem"),
        names[0],
        d("client.pem"),
        d("client.key"),
        d("token")
    )?;
    Ok(())
}

/// The PEM texts of one run.
struct Set {
    ca_pem: String,
    ca_key: String,
    server_pem: String,
    server_key: String,
    client_pem: String,
    client_key: String,
}

/// A CA, and a server (for `names`) and a client certificate signed by it, valid from a
/// few minutes ago (a little clock skew between hosts) for `days`.
fn generate(names: &[String], days: u32) -> anyhow::Result<Set> {
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::minutes(5);
    let not_after = now + time::Duration::days(i64::from(days));

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "shmrpc keygen CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate().context("cannot make the CA's key")?;
    let ca_cert = ca.self_signed(&ca_key).context("cannot sign the CA")?;
    let issuer = Issuer::from_params(&ca, &ca_key);

    let leaf = |names: Vec<String>,
                cn: &str,
                usage: ExtendedKeyUsagePurpose|
     -> anyhow::Result<(String, String)> {
        let mut p = CertificateParams::new(names)
            .with_context(|| "a --name is not a DNS name or an IP address".to_owned())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        p.not_before = not_before;
        p.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_pem, server_key) = leaf(
        names.to_vec(),
        &names[0],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_pem, client_key) = leaf(
        Vec::new(),
        "shmrpc keygen client",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok(Set {
        ca_pem: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        server_pem,
        server_key,
        client_pem,
        client_key,
    })
}

/// Writes a new file of this mode; an existing one is an error, never overwritten.
fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// A path as a shell word: as it is when it needs no quoting, else in single quotes.
fn quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_quoted_only_when_needed() {
        assert_eq!(quote(Path::new("/tmp/a-b/ca.pem")), "/tmp/a-b/ca.pem");
        assert_eq!(quote(Path::new("/tmp/a b/ca.pem")), "'/tmp/a b/ca.pem'");
        assert_eq!(quote(Path::new("/tmp/it's")), r"'/tmp/it'\''s'");
    }

    #[test]
    fn a_name_that_cannot_be_in_a_certificate_is_refused() {
        let Err(e) = generate(&["bücher.example".into()], 1) else {
            panic!("a non-ASCII name was taken");
        };
        assert!(format!("{e:#}").contains("--name"), "{e:#}");
        assert!(generate(&["localhost".into(), "::1".into()], 1).is_ok());
    }
}
