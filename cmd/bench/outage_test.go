package main

import (
	"strings"
	"testing"
)

func TestOutageTargets(t *testing.T) {
	tests := []struct {
		name     string
		outage   outageResult
		rssMet   bool
		onceMet  bool
		rssInGot string
	}{
		{
			name:   "bounded",
			outage: outageResult{Events: 8000, PeakRSS: 150 * mib, OutagePeakRSS: 150 * mib, DrainPeakRSS: 120 * mib, Once: true},
			rssMet: true, onceMet: true, rssInGot: "150.0 MiB (outage 150.0, drain 120.0",
		},
		{
			name:   "at the target",
			outage: outageResult{Events: 8000, PeakRSS: rssTargetMiB * mib, Once: true},
			rssMet: false, onceMet: true, rssInGot: "200.0 MiB",
		},
		{
			name:   "drain failed",
			outage: outageResult{Events: 8000, PeakRSS: 300 * mib, Check: "not checked: the drain failed"},
			rssMet: false, onceMet: false, rssInGot: "300.0 MiB",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := evaluate(&results{Outage: &tt.outage})
			if len(ts) != 2 {
				t.Fatalf("targets: %+v", ts)
			}
			if ts[0].Met != tt.rssMet || !strings.HasPrefix(ts[0].Got, tt.rssInGot) {
				t.Errorf("peak RSS target: %+v", ts[0])
			}
			if ts[1].Met != tt.onceMet || ts[1].Got != tt.outage.Check {
				t.Errorf("stream target: %+v", ts[1])
			}
		})
	}
}

func TestRSSCurve(t *testing.T) {
	o := &outageResult{Samples: []memSample{
		{Seconds: 0.5, Phase: "outage", RSS: 10 * mib, Read: 100},
		{Seconds: 1.0, Phase: "outage", RSS: 20 * mib, Read: 1000},
		{Seconds: 1.5, Phase: "outage", RSS: 30 * mib, Read: 2000},
		{Seconds: 2.0, Phase: "drain", RSS: 40 * mib, Read: 2000},
	}}
	if got, want := rssCurve(o, "outage", 1), "0.5 s: 10.0 (100 read), 1.5 s: 30.0 (2,000 read)"; got != want {
		t.Errorf("outage curve %q, want %q", got, want)
	}
	if got := peakSample(o.Samples, "drain"); got != 40*mib {
		t.Errorf("drain peak %d", got)
	}
	if got := peakSample(o.Samples, "outage"); got != 30*mib {
		t.Errorf("outage peak %d", got)
	}
}
