package balancer_test

import (
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/config"
)

func TestSummaryLog(t *testing.T) {
	be1 := startEcho(t, "be1")
	cfg := &config.Config{Log: config.Log{SummaryInterval: 50 * time.Millisecond}, Services: []config.Service{testService("web", config.CheckNone, be1)}}
	log, hook := logtest.NewNullLogger()
	eng := runEngine(t, balancer.Options{Config: cfg, Logger: logrus.NewEntry(log)}).eng
	waitStatus(t, eng)
	backendName(t, eng.Addr("web"), "127.0.0.5")
	deadline := time.Now().Add(3 * time.Second)
	for {
		for _, e := range hook.AllEntries() {
			if e.Message == "summary" && e.Data["service"] == "web" && e.Data["clients"] == 1 && e.Data["backends_up"] == 1 && e.Level == logrus.InfoLevel {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no summary line with 1 client and 1 backend up; log: %v", hook.AllEntries())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
