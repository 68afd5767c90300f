package relay

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/outbox-relay/outbox-relay/internal/cdc"
)

// CloudEvents headers, as the CloudEvents NATS protocol binding names them
// for binary content mode: every context attribute in a header named after
// it with the prefix "ce-", the data as the message body.
const (
	HeaderCESpecVersion     = "ce-specversion"
	HeaderCEID              = "ce-id"
	HeaderCESource          = "ce-source"
	HeaderCEType            = "ce-type"
	HeaderCETime            = "ce-time"
	HeaderCESubject         = "ce-subject"
	HeaderCEDataContentType = "ce-datacontenttype"
	// HeaderContentType carries the data's content type too, as the Go SDK
	// also reads it; a value other than application/cloudevents... means
	// binary mode to a receiver.
	HeaderContentType = "content-type"
)

// ceAttributes are the context attributes the relay sets itself (or that
// name the data): a row header of one of these names stays a plain header
// rather than override them.
var ceAttributes = map[string]bool{
	"specversion": true, "id": true, "source": true, "type": true, "time": true,
	"subject": true, "datacontenttype": true, "data": true, "data_base64": true,
}

// traceHeaders are kept under their own names too in CloudEvents mode:
// OpenTelemetry's propagators read them there (a secondary mapping, which
// the binding allows next to the ce- headers).
var traceHeaders = map[string]bool{"traceparent": true, "tracestate": true, "baggage": true}

// CloudEvents makes a Mapper build every message as a CloudEvent in binary
// content mode, per the CloudEvents NATS protocol binding (1.0.3):
//
//   - ce-specversion 1.0; ce-id the event id; ce-source the configured
//     source; ce-type from the type template; ce-time created_at (RFC 3339,
//     UTC); ce-subject the aggregate id; ce-datacontenttype and
//     content-type application/json; the payload as the body;
//   - every entry of the row's headers whose name is a valid CloudEvents
//     attribute name (a-z, 0-9) becomes the extension ce-<name>, except the
//     attributes above, which stay plain headers; other names stay plain
//     headers; traceparent, tracestate and baggage are also kept under
//     their own names;
//   - values are percent-encoded as the binding requires: space, '"', '%'
//     and everything outside printable ASCII.
//
// The relay's own headers (Outbox-*, Nats-Msg-Id) are there as in plain
// mode. A row header named ce-* or content-type makes the row poison
// (bad_row): it would contradict the event's attributes. Dead letters are
// not CloudEvents. It is used by the Mapper's goroutine only.
type CloudEvents struct {
	rawSource  string
	source     []string // encoded; shared by every message
	typeParts  []templatePart
	typeSource string

	typeBuf  []byte
	lastType string
	lastEnc  []string
	values   [2][1]string // ce-id, ce-subject
	renames  []string
	extNames map[string]string // row header name -> ce-<name>, bounded
}

// Values shared by every message; never modified.
var (
	ceSpecVersion = []string{"1.0"}
	ceJSON        = []string{"application/json"}
)

// NewCloudEvents checks the source (a URI reference, not empty) and the type
// template (literal text with placeholders {aggregate_type},
// {aggregate_id}, {event_type} or {id}).
func NewCloudEvents(source, typeTemplate string) (*CloudEvents, error) {
	var errs []error
	if source == "" {
		errs = append(errs, errors.New("cloudevents-source: must not be empty"))
	} else if _, err := url.Parse(source); err != nil {
		errs = append(errs, fmt.Errorf("cloudevents-source: %q is not a URI reference", source))
	}
	parts, err := parseTypeTemplate(typeTemplate)
	if err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &CloudEvents{
		rawSource: source, source: []string{ceEncode(source)}, typeParts: parts, typeSource: typeTemplate,
		extNames: map[string]string{},
	}, nil
}

// Source returns the ce-source of every message, as configured.
func (ce *CloudEvents) Source() string { return ce.rawSource }

// parseTypeTemplate splits a type template into literals and placeholders.
func parseTypeTemplate(s string) ([]templatePart, error) {
	if s == "" {
		return nil, errors.New("cloudevents-type: must not be empty")
	}
	return parsePlaceholders("cloudevents-type", s, s)
}

// stamp turns the message being built in header into a CloudEvent: it sets
// the attributes and moves the row's headers to extensions. It runs after
// the row's and the relay's headers are in place.
func (ce *CloudEvents) stamp(header nats.Header, ev *cdc.Event) error {
	ce.renames = ce.renames[:0]
	reserved := ""
	for name := range header {
		// EqualFold, not ToLower: no allocation per header and message.
		isCE := len(name) >= 3 && strings.EqualFold(name[:3], "ce-")
		if (isCE || strings.EqualFold(name, HeaderContentType)) && (reserved == "" || name < reserved) {
			reserved = name // the first in name order, whatever the map's order
		}
		if validCEName(name) && !ceAttributes[name] {
			ce.renames = append(ce.renames, name)
		}
	}
	if reserved != "" {
		return fmt.Errorf("column headers: %q is reserved for the CloudEvents attributes (--cloudevents); name an extension without the ce- prefix", reserved)
	}
	for _, name := range ce.renames {
		ext, ok := ce.extNames[name]
		if !ok {
			ext = "ce-" + name
			if len(ce.extNames) < 256 { // row header names repeat; bounded anyway
				ce.extNames[name] = ext
			}
		}
		value := header[name]
		if enc := ceEncode(value[0]); enc != value[0] {
			value = []string{enc}
		}
		header[ext] = value
		if !traceHeaders[name] {
			delete(header, name)
		}
	}

	ce.typeBuf = ce.typeBuf[:0]
	for _, p := range ce.typeParts {
		if p.field == "" {
			ce.typeBuf = append(ce.typeBuf, p.literal...)
		} else {
			ce.typeBuf = append(ce.typeBuf, templateField(ev, p.field)...)
		}
	}
	if len(ce.typeBuf) == 0 {
		return fmt.Errorf("the CloudEvents type from --cloudevents-type %q is empty", ce.typeSource)
	}
	if string(ce.typeBuf) != ce.lastType {
		ce.lastType = string(ce.typeBuf)
		ce.lastEnc = []string{ceEncode(ce.lastType)}
	}

	header[HeaderCESpecVersion] = ceSpecVersion
	ce.values[0][0] = ceEncode(ev.ID)
	header[HeaderCEID] = ce.values[0][:]
	header[HeaderCESource] = ce.source
	header[HeaderCEType] = ce.lastEnc
	if created, ok := header[HeaderCreatedAt]; ok {
		header[HeaderCETime] = created // RFC 3339: nothing to encode
	}
	if ev.AggregateID != "" {
		ce.values[1][0] = ceEncode(ev.AggregateID)
		header[HeaderCESubject] = ce.values[1][:]
	}
	header[HeaderCEDataContentType] = ceJSON
	header[HeaderContentType] = ceJSON
	return nil
}

// validCEName reports whether name is a valid CloudEvents attribute name:
// lower-case ASCII letters and digits.
func validCEName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// ceEncode percent-encodes s for a header value as the binding requires:
// space, double quote, percent and every byte outside printable ASCII
// (UTF-8 sequences byte by byte), with upper-case hex. s is returned as it
// is when nothing needs encoding, which is the usual case.
func ceEncode(s string) string {
	i := 0
	for i < len(s) && !ceEscaped(s[i]) {
		i++
	}
	if i == len(s) {
		return s
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, len(s)+16)
	b = append(b, s[:i]...)
	for ; i < len(s); i++ {
		if c := s[i]; ceEscaped(c) {
			b = append(b, '%', hex[c>>4], hex[c&0xf])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

func ceEscaped(c byte) bool { return c <= ' ' || c >= 0x7f || c == '"' || c == '%' }
