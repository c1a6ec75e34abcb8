package goloop

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"fmt"
	"math/big"
	"strings"
)

// decodeCert is ssl's getpeercert() dict for a verified peer certificate
// (CPython's _decode_certificate over OpenSSL): names with OpenSSL's long
// names, RDN grouping and order as in the DER, subjectAltName in the
// extension's order. JSON arrays stand for Python's tuples; Python turns
// them back (docs/gotls.md).
func decodeCert(c *x509.Certificate) jsonObject {
	o := jsonObject{
		{"subject", decodeName(c.RawSubject)},
		{"issuer", decodeName(c.RawIssuer)},
		{"version", c.Version},
		{"serialNumber", serialHex(c.SerialNumber)},
		{"notBefore", c.NotBefore.UTC().Format(opensslTime)},
		{"notAfter", c.NotAfter.UTC().Format(opensslTime)},
	}
	if san := decodeSAN(c); san != nil {
		o = append(o, jsonKV{"subjectAltName", san})
	}
	if len(c.OCSPServer) > 0 {
		o = append(o, jsonKV{"OCSP", c.OCSPServer})
	}
	if len(c.IssuingCertificateURL) > 0 {
		o = append(o, jsonKV{"caIssuers", c.IssuingCertificateURL})
	}
	if len(c.CRLDistributionPoints) > 0 {
		o = append(o, jsonKV{"crlDistributionPoints", c.CRLDistributionPoints})
	}
	return o
}

// ASN1_TIME_print's form.
const opensslTime = "Jan _2 15:04:05 2006 GMT"

// serialHex is i2a_ASN1_INTEGER: the magnitude's bytes in upper-case hex.
func serialHex(n *big.Int) string {
	if n == nil {
		return "00"
	}
	b := n.Bytes()
	if len(b) == 0 {
		b = []byte{0}
	}
	s := strings.ToUpper(fmt.Sprintf("%x", b))
	if n.Sign() < 0 {
		s = "-" + s
	}
	return s
}

// jsonObject keeps its keys in order (Python's dict order).
type jsonKV struct {
	k string
	v any
}

type jsonObject []jsonKV

func (o jsonObject) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, kv := range o {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(kv.k)
		v, err := json.Marshal(kv.v)
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// OpenSSL's long names (OBJ_obj2txt with names) for the attributes seen in
// names; others print as the dotted OID, as OpenSSL does for unknown ones.
var opensslLongNames = map[string]string{
	"2.5.4.3":                    "commonName",
	"2.5.4.4":                    "surname",
	"2.5.4.5":                    "serialNumber",
	"2.5.4.6":                    "countryName",
	"2.5.4.7":                    "localityName",
	"2.5.4.8":                    "stateOrProvinceName",
	"2.5.4.9":                    "streetAddress",
	"2.5.4.10":                   "organizationName",
	"2.5.4.11":                   "organizationalUnitName",
	"2.5.4.12":                   "title",
	"2.5.4.13":                   "description",
	"2.5.4.15":                   "businessCategory",
	"2.5.4.17":                   "postalCode",
	"2.5.4.41":                   "name",
	"2.5.4.42":                   "givenName",
	"2.5.4.43":                   "initials",
	"2.5.4.44":                   "generationQualifier",
	"2.5.4.46":                   "dnQualifier",
	"2.5.4.65":                   "pseudonym",
	"1.2.840.113549.1.9.1":       "emailAddress",
	"0.9.2342.19200300.100.1.1":  "userId",
	"0.9.2342.19200300.100.1.25": "domainComponent",
	"1.3.6.1.4.1.311.60.2.1.1":   "jurisdictionLocalityName",
	"1.3.6.1.4.1.311.60.2.1.2":   "jurisdictionStateOrProvinceName",
	"1.3.6.1.4.1.311.60.2.1.3":   "jurisdictionCountryName",
}

func oidName(oid asn1.ObjectIdentifier) string {
	if n, ok := opensslLongNames[oid.String()]; ok {
		return n
	}
	return oid.String()
}

// decodeName is a Name as ssl gives it: a tuple of RDNs, each a tuple of
// (name, value) pairs.
func decodeName(raw []byte) [][][2]string {
	var seq pkix.RDNSequence
	if _, err := asn1.Unmarshal(raw, &seq); err != nil {
		return [][][2]string{}
	}
	out := make([][][2]string, 0, len(seq))
	for _, rdn := range seq {
		r := make([][2]string, 0, len(rdn))
		for _, atv := range rdn {
			r = append(r, [2]string{oidName(atv.Type), fmt.Sprint(atv.Value)})
		}
		out = append(out, r)
	}
	return out
}

var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

// decodeSAN is subjectAltName in the extension's order, with CPython's
// labels; nil when the certificate has none.
func decodeSAN(c *x509.Certificate) [][2]any {
	var raw []byte
	for _, e := range c.Extensions {
		if e.Id.Equal(oidSAN) {
			raw = e.Value
		}
	}
	if raw == nil {
		return nil
	}
	var names []asn1.RawValue
	if _, err := asn1.Unmarshal(raw, &names); err != nil {
		return nil
	}
	out := make([][2]any, 0, len(names))
	for _, n := range names {
		if n.Class != asn1.ClassContextSpecific {
			continue
		}
		switch n.Tag {
		case 0:
			out = append(out, [2]any{"othername", "<unsupported>"})
		case 1:
			out = append(out, [2]any{"email", string(n.Bytes)})
		case 2:
			out = append(out, [2]any{"DNS", string(n.Bytes)})
		case 3:
			out = append(out, [2]any{"X400Name", "<unsupported>"})
		case 4:
			// [4] EXPLICIT Name: the content is the Name's own SEQUENCE.
			out = append(out, [2]any{"DirName", decodeName(n.Bytes)})
		case 5:
			out = append(out, [2]any{"EdiPartyName", "<unsupported>"})
		case 6:
			out = append(out, [2]any{"URI", string(n.Bytes)})
		case 7:
			out = append(out, [2]any{"IP Address", sanIP(n.Bytes)})
		case 8:
			// [8] IMPLICIT OBJECT IDENTIFIER: rebuild the tagged value.
			var oid asn1.ObjectIdentifier
			full, _ := asn1.Marshal(asn1.RawValue{Tag: asn1.TagOID, Class: asn1.ClassUniversal, Bytes: n.Bytes})
			if _, err := asn1.Unmarshal(full, &oid); err == nil {
				out = append(out, [2]any{"Registered ID", oidName(oid)})
			}
		}
	}
	return out
}

// sanIP is CPython's form: dotted IPv4, IPv6 as eight upper-case hex
// groups without compression.
func sanIP(b []byte) string {
	switch len(b) {
	case 4:
		return fmt.Sprintf("%d.%d.%d.%d", b[0], b[1], b[2], b[3])
	case 16:
		g := make([]string, 8)
		for i := range g {
			g[i] = fmt.Sprintf("%X", int(b[2*i])<<8|int(b[2*i+1]))
		}
		return strings.Join(g, ":")
	}
	return "<invalid>"
}
