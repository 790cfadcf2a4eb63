//! Where a webhook may be sent (SSRF): `https://` only, and never to a
//! private, loopback, link-local (cloud metadata), shared, multicast or
//! otherwise reserved address — checked when an endpoint is registered and
//! again at every delivery after DNS resolution, by the resolver the HTTP
//! client connects with, so a name that rebinds to such an address between
//! the check and the connection is refused too. `webhooks.allow_http` and
//! `webhooks.allow_private_networks` lift the rules (tests, the local cluster).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

/// What the operator allows beyond the public internet over HTTPS.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddressPolicy {
    pub allow_http: bool,
    pub allow_private_networks: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedUrl {
    #[error("is not a URL: {0}")]
    Malformed(String),
    #[error("must be https://")]
    NotHttps,
    #[error("must not carry a user name or password")]
    Credentials,
    #[error("points into a private, loopback or link-local network ({0})")]
    Private(IpAddr),
    #[error("its host name does not resolve: {0}")]
    Unresolved(String),
}

impl AddressPolicy {
    /// The URL, if it may be registered: its scheme, and every address its host resolves to.
    pub async fn check(&self, url: &str) -> Result<Url, RefusedUrl> {
        let parsed = self.check_form(url)?;
        let host = parsed.host_str().unwrap_or_default().to_owned();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addresses = self.resolve(&host, port).await?;
        if addresses.is_empty() {
            return Err(RefusedUrl::Unresolved(host));
        }
        Ok(parsed)
    }

    /// The scheme and form of a URL, and its host if it is an address.
    pub fn check_form(&self, url: &str) -> Result<Url, RefusedUrl> {
        let parsed = Url::parse(url).map_err(|err| RefusedUrl::Malformed(err.to_string()))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            _ => return Err(RefusedUrl::NotHttps),
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(RefusedUrl::Credentials);
        }
        match parsed.host() {
            Some(url::Host::Ipv4(ip)) => self.allowed(IpAddr::V4(ip))?,
            Some(url::Host::Ipv6(ip)) => self.allowed(IpAddr::V6(ip))?,
            Some(url::Host::Domain(_)) => {}
            None => return Err(RefusedUrl::Malformed("it names no host".to_owned())),
        }
        Ok(parsed)
    }

    /// The addresses `host` resolves to, each allowed; refused if any is not
    /// (a name with one private address among public ones is still a way in).
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, RefusedUrl> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            self.allowed(ip)?;
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|err| RefusedUrl::Unresolved(format!("{host}: {err}")))?
            .collect();
        self.check_resolved(addresses)
    }

    /// The addresses a name resolved to, if every one is allowed.
    pub fn check_resolved(&self, addresses: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, RefusedUrl> {
        for address in &addresses {
            self.allowed(address.ip())?;
        }
        Ok(addresses)
    }

    fn allowed(&self, ip: IpAddr) -> Result<(), RefusedUrl> {
        if self.allow_private_networks || is_public(ip) { Ok(()) } else { Err(RefusedUrl::Private(ip)) }
    }
}

/// Whether `ip` is an address of the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => is_public_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(mapped) => is_public_v4(mapped),
            None => is_public_v6(ip),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254.0.0/16, cloud metadata among them
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier-grade NAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
        || first == 0x0064 // NAT64 (64:ff9b::/96) may reach private IPv4
        || ip.to_ipv4().is_some_and(|v4| !is_public_v4(v4)))
}

/// The HTTP client's resolver: only allowed addresses are connected to.
#[derive(Debug, Clone, Copy)]
pub struct CheckedResolver(pub AddressPolicy);

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        Box::pin(async move {
            let addresses = policy
                .resolve(name.as_str(), 0)
                .await
                .map_err(|refused| Box::new(refused) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_and_metadata_addresses_are_refused_public_ones_pass() {
        let strict = AddressPolicy::default();
        for url in [
            "https://127.0.0.1/hook",
            "https://10.1.2.3/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/hook",
            "https://[fd00::1]/hook",
            "https://[::ffff:10.0.0.1]/hook",
            "https://100.64.0.1/hook",
            "https://localhost/hook",
        ] {
            assert!(matches!(strict.check(url).await, Err(RefusedUrl::Private(_))), "{url}");
        }
        assert_eq!(strict.check("http://93.184.215.14/hook").await.unwrap_err(), RefusedUrl::NotHttps);
        assert_eq!(strict.check("https://user:pw@93.184.215.14/").await.unwrap_err(), RefusedUrl::Credentials);
        assert!(strict.check("https://93.184.215.14/hook").await.is_ok());
        assert!(strict.check("ftp://93.184.215.14/").await.is_err());

        let open = AddressPolicy { allow_http: true, allow_private_networks: true };
        assert!(open.check("http://127.0.0.1:8080/hook").await.is_ok());
    }

    /// A name that resolves (or rebinds) to a private address is refused,
    /// also when only one of its addresses is private.
    #[test]
    fn a_name_resolving_to_a_private_address_is_refused() {
        let strict = AddressPolicy::default();
        let public: SocketAddr = "93.184.215.14:443".parse().unwrap();
        let private: SocketAddr = "10.1.2.3:443".parse().unwrap();
        assert_eq!(strict.check_resolved(vec![public]).unwrap(), [public]);
        assert_eq!(strict.check_resolved(vec![private]).unwrap_err(), RefusedUrl::Private(private.ip()));
        assert_eq!(strict.check_resolved(vec![public, private]).unwrap_err(), RefusedUrl::Private(private.ip()));
        let open = AddressPolicy { allow_http: false, allow_private_networks: true };
        assert!(open.check_resolved(vec![private]).is_ok());
    }
}
