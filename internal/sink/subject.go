package sink

import "strings"

// ValidToken reports whether s can stand as one token of a NATS subject: not
// empty, and free of '.', the wildcards '*' and '>', whitespace and control
// characters.
func ValidToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '.', c == '*', c == '>', c <= ' ', c == 0x7f:
			return false
		}
	}
	return true
}

// ValidSubject reports whether s is a valid subject; wildcards are allowed
// only when wildcards is true, '*' as a whole token and '>' as the last.
func ValidSubject(s string, wildcards bool) bool {
	tokens := strings.Split(s, ".")
	for i, t := range tokens {
		if wildcards && (t == "*" || (t == ">" && i == len(tokens)-1)) {
			continue
		}
		if !ValidToken(t) {
			return false
		}
	}
	return true
}

// Captures reports whether a stream with filters stores messages published
// to subject. subject may itself contain wildcards, in which case every
// subject it matches must be captured.
func Captures(filters []string, subject string) bool {
	for _, f := range filters {
		if subsetMatch(subject, f) {
			return true
		}
	}
	return false
}

// subsetMatch reports whether every subject matching subject also matches
// filter.
func subsetMatch(subject, filter string) bool {
	st := strings.Split(subject, ".")
	ft := strings.Split(filter, ".")
	for i, f := range ft {
		if f == ">" {
			return len(st) > i
		}
		if i >= len(st) {
			return false
		}
		s := st[i]
		switch {
		case s == ">":
			return false
		case f == "*":
		case f != s || s == "*":
			return false
		}
	}
	return len(st) == len(ft)
}
