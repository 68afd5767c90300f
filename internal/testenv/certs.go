package testenv

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// certValidity is how long certificates from this file are valid; they are
// backdated by an hour so clock skew between processes cannot matter.
const certValidity = 24 * time.Hour

// CA is a throwaway certificate authority for TLS tests. Every certificate
// and key it makes is also written, PEM-encoded, into a private temporary
// directory of the test (removed in t.Cleanup), so clients configured with
// file paths (sslrootcert=, --nats-tls-ca, ...) can use them directly.
//
// Keys are ECDSA P-256, which PostgreSQL (OpenSSL), NATS and Go all accept,
// stored unencrypted in PKCS#8 ("PRIVATE KEY") with mode 0600.
//
// Two CAs from NewCA never trust each other's certificates, which is how a
// test gives a client "the wrong CA".
type CA struct {
	// Cert is the CA's self-signed certificate and CertPEM its PEM encoding.
	Cert    *x509.Certificate
	CertPEM []byte
	// CertFile is the path of CertPEM on disk: what a client is given to
	// verify servers with (sslrootcert, --nats-tls-ca), or a server to
	// verify clients with (ssl_ca_file).
	CertFile string

	key  crypto.Signer
	dir  string
	name string

	mu     sync.Mutex // guards issued
	issued int        // certificates issued so far, to name their files
}

// KeyPair is a certificate issued by a CA with its private key, in memory
// and on disk.
type KeyPair struct {
	// Cert is the parsed leaf certificate.
	Cert *x509.Certificate
	// CertPEM and KeyPEM are the PEM encodings of the certificate and its
	// PKCS#8 private key.
	CertPEM, KeyPEM []byte
	// CertFile (mode 0644) and KeyFile (mode 0600) hold CertPEM and KeyPEM.
	CertFile, KeyFile string
}

// NewCA creates a certificate authority whose subject common name is name
// ("test-ca" when empty) and writes its certificate to <name>-ca.crt in a
// temporary directory. It fails the test on error.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	if name == "" {
		name = "test-ca"
	}
	key, err := newKey()
	if err != nil {
		t.Fatalf("testenv: new CA %s: %v", name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serialNumber(t),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"outbox-relay tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("testenv: new CA %s: %v", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testenv: new CA %s: %v", name, err)
	}
	ca := &CA{Cert: cert, CertPEM: pemBlock("CERTIFICATE", der), key: key, dir: t.TempDir(), name: name}
	ca.CertFile = ca.write(t, name+"-ca.crt", ca.CertPEM, 0o644)
	return ca
}

// ServerCert issues a certificate for TLS servers (extended key usage
// serverAuth) valid for hosts, each an IP address or DNS name; without
// hosts it covers 127.0.0.1 and localhost, where testenv servers listen.
// The first host is also the subject common name. Files are named
// server-<n>.crt and server-<n>.key.
func (ca *CA) ServerCert(t testing.TB, hosts ...string) *KeyPair {
	t.Helper()
	if len(hosts) == 0 {
		hosts = []string{loopbackHost, "localhost"}
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: hosts[0]},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return ca.issue(t, "server", tmpl)
}

// ClientCert issues a certificate for TLS clients (extended key usage
// clientAuth) whose subject common name is commonName. PostgreSQL's "cert"
// authentication maps the common name to the role, so for it commonName
// must be the user name. Files are named client-<commonName>-<n>.crt/.key.
func (ca *CA) ClientCert(t testing.TB, commonName string) *KeyPair {
	t.Helper()
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: commonName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return ca.issue(t, "client-"+commonName, tmpl)
}

// Pool returns a certificate pool trusting only this CA, for a Go
// tls.Config's RootCAs (clients) or ClientCAs (servers).
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return pool
}

// TLSCertificate returns the pair as a tls.Certificate for a Go
// tls.Config's Certificates. It fails the test on error.
func (kp *KeyPair) TLSCertificate(t testing.TB) tls.Certificate {
	t.Helper()
	cert, err := tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
	if err != nil {
		t.Fatalf("testenv: load key pair %s: %v", kp.CertFile, err)
	}
	return cert
}

// issue signs tmpl with the CA, filling in serial, validity, key usage and
// a fresh key, and writes the pair as <prefix>-<n>.crt/.key.
func (ca *CA) issue(t testing.TB, prefix string, tmpl *x509.Certificate) *KeyPair {
	t.Helper()
	key, err := newKey()
	if err != nil {
		t.Fatalf("testenv: issue %s certificate: %v", prefix, err)
	}
	now := time.Now()
	tmpl.SerialNumber = serialNumber(t)
	tmpl.NotBefore = now.Add(-time.Hour)
	tmpl.NotAfter = now.Add(certValidity)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.key)
	if err != nil {
		t.Fatalf("testenv: issue %s certificate: %v", prefix, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("testenv: issue %s certificate: %v", prefix, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("testenv: issue %s certificate: %v", prefix, err)
	}
	kp := &KeyPair{Cert: cert, CertPEM: pemBlock("CERTIFICATE", der), KeyPEM: pemBlock("PRIVATE KEY", keyDER)}
	ca.mu.Lock()
	ca.issued++
	base := fmt.Sprintf("%s-%d", prefix, ca.issued)
	ca.mu.Unlock()
	kp.CertFile = ca.write(t, base+".crt", kp.CertPEM, 0o644)
	kp.KeyFile = ca.write(t, base+".key", kp.KeyPEM, 0o600)
	return kp
}

// write stores data as name in the CA's directory with mode perm.
func (ca *CA) write(t testing.TB, name string, data []byte, perm os.FileMode) string {
	t.Helper()
	path := filepath.Join(ca.dir, name)
	if err := os.WriteFile(path, data, perm); err != nil {
		t.Fatalf("testenv: write %s: %v", path, err)
	}
	return path
}

func newKey() (crypto.Signer, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func serialNumber(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("testenv: certificate serial: %v", err)
	}
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
