//! The TCP transport's options of `serve` and `call` (TLS, token, compression), and the
//! hints that turn a failed bind or connect into a message naming the flag to fix.

use std::path::{Path, PathBuf};

use anyhow::Context;
use shmrpc::{
    ClientTls, Compression, HandshakeError, ServerTls, TcpClientConfig, TcpServerConfig, TlsError,
    Token,
};

/// `--compress`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressArg {
    /// Never compress.
    None,
    /// LZ4 for larger frames, when the other end agrees.
    Lz4,
}

impl From<CompressArg> for Compression {
    fn from(c: CompressArg) -> Self {
        match c {
            CompressArg::None => Compression::None,
            CompressArg::Lz4 => Compression::Lz4,
        }
    }
}

/// `serve --tcp`'s security and compression options.
#[derive(Debug, Default, clap::Args)]
pub struct ServerTcpArgs {
    /// TLS: the server's certificate chain (PEM), with --key. Replaces the TLS settings of
    /// --config (its client_ca too).
    #[arg(long, value_name = "FILE", requires = "key", help_heading = "TCP")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert", help_heading = "TCP")]
    pub key: Option<PathBuf>,
    /// Mutual TLS: clients must present a certificate signed by this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "cert", help_heading = "TCP")]
    pub client_ca: Option<PathBuf>,
    /// Clients must prove they know the token in this file (hex, mode 0600; see `shmrpc
    /// keygen`).
    #[arg(long, value_name = "FILE", help_heading = "TCP")]
    pub token_file: Option<PathBuf>,
    /// Allow plaintext on a non-loopback address (anyone on the path can read and alter
    /// the traffic).
    #[arg(long, help_heading = "TCP")]
    pub insecure_plaintext: bool,
    /// Compress frames when the client agrees.
    #[arg(long, value_enum, value_name = "ALGO", help_heading = "TCP")]
    pub compress: Option<CompressArg>,
}

/// `call --tcp`'s security and compression options.
#[derive(Debug, Default, clap::Args)]
pub struct ClientTcpArgs {
    /// TLS: trust a server whose certificate this CA (PEM) signed.
    #[arg(long, value_name = "FILE", help_heading = "TCP")]
    pub ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the IP address of --tcp).
    #[arg(long, value_name = "NAME", requires = "ca", help_heading = "TCP")]
    pub server_name: Option<String>,
    /// Mutual TLS: this client's certificate chain (PEM), with --key.
    #[arg(long, value_name = "FILE", requires_all = ["ca", "key"], help_heading = "TCP")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert", help_heading = "TCP")]
    pub key: Option<PathBuf>,
    /// Prove to the server that this client knows the token in this file (hex, mode 0600).
    #[arg(long, value_name = "FILE", help_heading = "TCP")]
    pub token_file: Option<PathBuf>,
    /// Allow plaintext to a non-loopback address.
    #[arg(long, help_heading = "TCP")]
    pub insecure_plaintext: bool,
    /// Ask the server to compress frames.
    #[arg(long, value_enum, value_name = "ALGO", help_heading = "TCP")]
    pub compress: Option<CompressArg>,
}

/// A file named by `flag`, read whole.
fn read(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))
}

fn token(path: &Path) -> anyhow::Result<Token> {
    Token::load(path).context("--token-file")
}

/// The first of `flags` that is set, if any.
fn first_set(flags: &[(&'static str, bool)]) -> Option<&'static str> {
    flags.iter().find(|(_, set)| *set).map(|(f, _)| *f)
}

impl ServerTcpArgs {
    /// The first of these flags given, if any (they apply only with --tcp).
    pub fn any_set(&self) -> Option<&'static str> {
        first_set(&[
            ("--cert", self.cert.is_some()),
            ("--client-ca", self.client_ca.is_some()),
            ("--token-file", self.token_file.is_some()),
            ("--insecure-plaintext", self.insecure_plaintext),
            ("--compress", self.compress.is_some()),
        ])
    }

    /// `tcp` (from the defaults or a configuration file) with these flags applied over it.
    ///
    /// # Errors
    /// A file that cannot be read or used, naming its flag.
    pub fn apply(&self, mut tcp: TcpServerConfig) -> anyhow::Result<TcpServerConfig> {
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let mut tls = ServerTls::from_pem(read("--cert", cert)?, read("--key", key)?);
            if let Some(ca) = &self.client_ca {
                tls = tls.with_client_ca_pem(read("--client-ca", ca)?);
            }
            tcp.tls = Some(tls);
        }
        if let Some(t) = &self.token_file {
            tcp.token = Some(token(t)?);
        }
        if self.insecure_plaintext {
            tcp.insecure_plaintext = true;
        }
        if let Some(c) = self.compress {
            tcp.compression = c.into();
        }
        Ok(tcp)
    }
}

impl ClientTcpArgs {
    /// The first of these flags given, if any (they apply only with --tcp).
    pub fn any_set(&self) -> Option<&'static str> {
        first_set(&[
            ("--ca", self.ca.is_some()),
            ("--token-file", self.token_file.is_some()),
            ("--insecure-plaintext", self.insecure_plaintext),
            ("--compress", self.compress.is_some()),
        ])
    }

    /// The client's TCP settings for a server at `addr`.
    ///
    /// # Errors
    /// A file that cannot be read or used, naming its flag.
    pub fn config(&self, addr: std::net::SocketAddr) -> anyhow::Result<TcpClientConfig> {
        let mut tcp = TcpClientConfig::default();
        if let Some(ca) = &self.ca {
            let name = self
                .server_name
                .clone()
                .unwrap_or_else(|| addr.ip().to_string());
            let mut tls = ClientTls::from_ca_pem(read("--ca", ca)?, name);
            if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
                tls = tls.with_client_cert_pem(read("--cert", cert)?, read("--key", key)?);
            }
            tcp = tcp.with_tls(tls);
        }
        if let Some(t) = &self.token_file {
            tcp = tcp.with_token(token(t)?);
        }
        tcp = tcp.with_insecure_plaintext(self.insecure_plaintext);
        if let Some(c) = self.compress {
            tcp = tcp.with_compression(c.into());
        }
        Ok(tcp)
    }
}

/// The errors in `e`'s chain.
fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// Which server flag a failed bind points at, if it is a TLS file's content.
pub fn server_hint(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    chain(e).find_map(|e| match e.downcast_ref::<TlsError>()? {
        TlsError::Pem {
            what: "certificate",
        } => Some("check --cert: it holds no certificate"),
        TlsError::Pem {
            what: "private key",
        } => Some("check --key: it holds no private key"),
        TlsError::Pem { .. } | TlsError::Verifier(_) => {
            Some("check --client-ca: it holds no usable CA certificate")
        }
        TlsError::Rustls(_) => Some("check --cert and --key: the key must be the certificate's"),
        _ => None,
    })
}

/// Which client flag a failed connect points at, if any, given the flags used.
pub fn client_hint(
    e: &(dyn std::error::Error + 'static),
    args: &ClientTcpArgs,
) -> Option<&'static str> {
    let tls = args.ca.is_some();
    chain(e).find_map(|e| {
        if let Some(t) = e.downcast_ref::<TlsError>() {
            return match t {
                TlsError::Pem {
                    what: "certificate",
                } => Some("check --cert: it holds no certificate"),
                TlsError::Pem {
                    what: "private key",
                } => Some("check --key: it holds no private key"),
                TlsError::Pem { .. } => Some("check --ca: it holds no usable CA certificate"),
                TlsError::ServerName(_) => Some("check --server-name"),
                _ => Some("check --ca, --cert and --key"),
            };
        }
        match e.downcast_ref::<HandshakeError>()? {
            HandshakeError::NoToken => Some("the server requires a token: pass --token-file"),
            HandshakeError::WrongToken | HandshakeError::ServerProof => {
                Some("the token of --token-file is not the server's")
            }
            HandshakeError::Refused(why) if why.contains("token") => {
                if args.token_file.is_some() {
                    Some("the token of --token-file is not the server's")
                } else {
                    Some("the server requires a token: pass --token-file")
                }
            }
            // The server's verdict on this client's certificate comes as a TLS alert.
            HandshakeError::Tls(io) | HandshakeError::Io(io) => {
                let text = io.to_string();
                let is_tls = matches!(e.downcast_ref::<HandshakeError>(), Some(HandshakeError::Tls(_)));
                if text.contains("CertificateRequired") {
                    Some("the server requires a client certificate: pass --cert and --key")
                } else if text.contains("UnknownCA")
                    || text.contains("BadCertificate")
                    || text.contains("DecryptError")
                {
                    Some("the server does not accept the certificate of --cert")
                } else if is_tls {
                    Some("check --ca and --server-name; a server with a client CA needs --cert and --key")
                } else if !tls {
                    Some("does the server use TLS? then pass --ca (and --server-name)")
                } else {
                    None
                }
            }
            HandshakeError::NotShmrpc if !tls => {
                Some("does the server use TLS? then pass --ca (and --server-name)")
            }
            _ => None,
        }
    })
}
