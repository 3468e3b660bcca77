package admin

import (
	"context"
	"fmt"
	"maps"
	"net/http"
	"runtime"
	"slices"
	"time"

	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/dataplane"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/sirupsen/logrus"
)

// statusTimeout bounds the Reader.Status call of one scrape.
const statusTimeout = 10 * time.Second

// metrics is /metrics: a private registry with the Go and process
// collectors, the classification-latency histogram that ObservePin feeds,
// and a collector that reads Reader.Status at scrape time (nothing
// polls in the background).
type metrics struct {
	reg     *prometheus.Registry
	status  *statusCollector
	handler http.Handler
}

func newMetrics(ctl Reader, version string, log *logrus.Entry) *metrics {
	m := &metrics{
		reg:    prometheus.NewRegistry(),
		status: newStatusCollector(ctl, version, log),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.status,
	)
	m.handler = promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      promLog{log.WithField("component", "metrics")},
		ErrorHandling: promhttp.ContinueOnError,
	})
	return m
}

func (m *metrics) observePin(service string, took time.Duration) {
	m.status.pinTime.WithLabelValues(service).Observe(took.Seconds())
}

func (m *metrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.handler.ServeHTTP(w, r)
}

// promLog sends promhttp's errors (a metric that failed to collect) to the
// logger.
type promLog struct{ e *logrus.Entry }

func (l promLog) Println(v ...any) { l.e.Warn(fmt.Sprint(v...)) }

// statusCollector turns one Reader.Status per scrape into metrics. It
// also collects the classification-latency histogram, after dropping the
// series of services the scrape's status no longer lists (a reload removed
// them), so that they do not stay until the process restarts.
type statusCollector struct {
	ctl     Reader
	version string
	log     *logrus.Entry

	pinTime *prometheus.HistogramVec

	up, buildInfo, open                              *prometheus.Desc
	classified, first, refused, migrations, migrated *prometheus.Desc
	migrationSeconds                                 *prometheus.Desc
	reloads                                          *prometheus.Desc
	pins, fill, backendUp, draining, active          *prometheus.Desc
	proxiedConns, proxiedBytes, fwdPackets, fwdBytes *prometheus.Desc

	lastReloadOK, lastReloadTime                        *prometheus.Desc
	syncs, syncFailures, syncSeconds, repairs, lastSync *prometheus.Desc
	checks, checkFailures, checkSeconds                 *prometheus.Desc
	pinsAdded, pinsUnpinned, pinsExpired, pinsMigrated  *prometheus.Desc

	overload overloadDescs
}

func newStatusCollector(ctl Reader, version string, log *logrus.Entry) *statusCollector {
	svc := []string{"service"}
	be := []string{"service", "backend"}
	d := prometheus.NewDesc
	return &statusCollector{
		ctl:     ctl,
		version: version,
		log:     log,
		pinTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "handoff_classification_seconds",
			Help: "Time from accepting a new client to the data plane's acknowledgement of its pin, classification included.",
			Buckets: []float64{
				.00005, .0001, .00025, .0005, .001, .0025, .005, .01,
				.025, .05, .1, .25, .5, 1, 2.5, 5, 10,
			},
		}, []string{"service"}),

		up:        d("handoff_up", "1 when the engine answered the scrape's status request, else 0.", nil, nil),
		buildInfo: d("handoff_build_info", "Always 1; the labels tell the version, the data plane mode (kernel | userspace) and the Go version.", []string{"version", "mode", "goversion"}, nil),
		open:      d("handoff_service_open", "1 when the service's listener accepts new clients.", svc, nil),

		classified:       d("handoff_classifications_total", "New clients classified, by result: pinned, no-backend, no-route, pin-failed, unclassified/<reason>, rejected/<reason>.", []string{"service", "result"}, nil),
		first:            d("handoff_first_connections_total", "New clients' first connections by how they were served: in-kernel (SYN held until pinned), transparent (proxied from the client's address), proxied, reset.", []string{"service", "outcome"}, nil),
		refused:          d("handoff_connections_refused_total", "Connections reset at once because max_connections were live.", svc, nil),
		migrations:       d("handoff_migrations_total", "Migrations of clients between backends: backend-down evacuations, failbacks and drain migrations.", svc, nil),
		migrated:         d("handoff_migrated_clients_total", "Clients moved by migrations.", svc, nil),
		migrationSeconds: d("handoff_migration_seconds_total", "Total duration of migrations.", svc, nil),
		reloads:          d("handoff_config_reloads_total", "Config reloads by result: ok, invalid, failed.", []string{"result"}, nil),

		pins:         d("handoff_pins", "Clients pinned to the backend (set members in kernel mode).", be, nil),
		fill:         d("handoff_set_fill_ratio", "Pinned clients over the service's max_clients: how full the backend's set is.", be, nil),
		backendUp:    d("handoff_backend_up", "1 when the backend is healthy, else 0.", be, nil),
		draining:     d("handoff_backend_draining", "1 when the backend is draining (takes no new clients).", be, nil),
		active:       d("handoff_active_connections", "Live connections proxied in userspace.", be, nil),
		proxiedConns: d("handoff_proxied_connections_total", "Connections proxied in userspace.", be, nil),
		proxiedBytes: d("handoff_proxied_bytes_total", "Bytes proxied in userspace; direction in is client to backend, out is backend to client.", []string{"service", "backend", "direction"}, nil),
		fwdPackets:   d("handoff_forwarded_packets_total", "Packets the kernel's DNAT rule for the backend matched: the first packet of each kernel-forwarded connection (kernel mode).", be, nil),
		fwdBytes:     d("handoff_forwarded_bytes_total", "Bytes of the backend's kernel-forwarded connections, both ways, counted in its entry of the service's counting set by rules in filter that see every packet (kernel mode; connections from this host itself are not forwarded, and not counted).", be, nil),

		lastReloadOK:   d("handoff_config_last_reload_successful", "1 when the last config reload succeeded (or none was made since the start), else 0.", nil, nil),
		lastReloadTime: d("handoff_config_last_reload_timestamp_seconds", "When the last config reload was made (the start, before the first), Unix time.", nil, nil),
		syncs:          d("handoff_rule_syncs_total", "Times the data plane applied the desired state: syncs and periodic checks.", nil, nil),
		syncFailures:   d("handoff_rule_sync_failures_total", "Syncs and checks of the data plane that failed (retried every check interval).", nil, nil),
		syncSeconds:    d("handoff_rule_sync_seconds", "Duration of the data plane's syncs and checks.", nil, nil),
		repairs:        d("handoff_rule_repairs_total", "Drifts of the kernel objects from the desired state that the canary check found and repaired.", nil, nil),
		lastSync:       d("handoff_rule_last_sync_success_timestamp_seconds", "When the data plane last applied the desired state successfully, Unix time.", nil, nil),
		checks:         d("handoff_health_checks_total", "Health checks run against the backend.", be, nil),
		checkFailures:  d("handoff_health_check_failures_total", "Health checks of the backend that failed.", be, nil),
		checkSeconds:   d("handoff_health_check_seconds", "How long the backend's last health check took.", be, nil),
		pinsAdded:      d("handoff_pins_added_total", "Pins made: new clients and pins by hand.", svc, nil),
		pinsUnpinned:   d("handoff_pins_unpinned_total", "Pins removed through the API.", svc, nil),
		pinsExpired:    d("handoff_pins_expired_total", "Pins that ended otherwise: client_ttl passed, or dropped with their backend (derived from the pin counts at each scrape).", svc, nil),
		pinsMigrated:   d("handoff_pins_migrated_total", "Pins moved to another backend by migrations.", svc, nil),
		overload:       newOverloadDescs(),
	}
}

func (c *statusCollector) descs() []*prometheus.Desc {
	return append([]*prometheus.Desc{
		c.up, c.buildInfo, c.open,
		c.classified, c.first, c.refused, c.migrations, c.migrated, c.migrationSeconds, c.reloads,
		c.pins, c.fill, c.backendUp, c.draining, c.active,
		c.proxiedConns, c.proxiedBytes, c.fwdPackets, c.fwdBytes,
		c.lastReloadOK, c.lastReloadTime, c.syncs, c.syncFailures, c.syncSeconds, c.repairs, c.lastSync,
		c.checks, c.checkFailures, c.checkSeconds,
		c.pinsAdded, c.pinsUnpinned, c.pinsExpired, c.pinsMigrated,
	}, c.overload.list()...)
}

// Describe implements prometheus.Collector.
func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs() {
		ch <- d
	}
	c.pinTime.Describe(ch)
}

// Collect implements prometheus.Collector: one Reader.Status call.
// When it fails, only handoff_up 0 and the build info are reported.
func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	st, err := c.ctl.Status(ctx)
	if err == nil {
		c.prunePinTime(st.Services) // a failed status drops nothing
	}
	defer c.pinTime.Collect(ch)
	emit := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
		m, err := prometheus.NewConstMetric(d, t, v, labels...)
		if err != nil {
			m = prometheus.NewInvalidMetric(d, err)
		}
		ch <- m
	}
	version := c.version
	if version == "" {
		version = st.Version
	}
	mode := st.Mode
	if err != nil {
		c.log.WithError(err).Warn("metrics: reading the engine's status")
		emit(c.up, prometheus.GaugeValue, 0)
		emit(c.buildInfo, prometheus.GaugeValue, 1, version, "unknown", runtime.Version())
		return
	}
	emit(c.up, prometheus.GaugeValue, 1)
	emit(c.buildInfo, prometheus.GaugeValue, 1, version, mode, runtime.Version())
	c.overload.collect(st, emit)
	for _, result := range slices.Sorted(maps.Keys(st.Reloads)) {
		emit(c.reloads, prometheus.CounterValue, float64(st.Reloads[result]), result)
	}
	if r := st.LastReload; r != nil {
		emit(c.lastReloadOK, prometheus.GaugeValue, bit(r.OK))
		emit(c.lastReloadTime, prometheus.GaugeValue, unixSeconds(r.At))
	} else {
		emit(c.lastReloadOK, prometheus.GaugeValue, 1)
		emit(c.lastReloadTime, prometheus.GaugeValue, unixSeconds(st.Started))
	}
	if sy := st.Sync; sy != nil {
		emit(c.syncs, prometheus.CounterValue, float64(sy.Syncs))
		emit(c.syncFailures, prometheus.CounterValue, float64(sy.Failures))
		emit(c.repairs, prometheus.CounterValue, float64(sy.Repairs))
		emit(c.lastSync, prometheus.GaugeValue, unixSeconds(sy.LastOK))
		buckets := make(map[float64]uint64, len(dataplane.SyncBuckets))
		for i, b := range dataplane.SyncBuckets {
			if i < len(sy.Counts) {
				buckets[b] = sy.Counts[i]
			}
		}
		if m, err := prometheus.NewConstHistogram(c.syncSeconds, sy.Syncs, sy.Seconds, buckets); err == nil {
			ch <- m
		}
	}
	for _, s := range st.Services {
		emit(c.open, prometheus.GaugeValue, bit(s.Open), s.Name)
		for _, result := range slices.Sorted(maps.Keys(s.Classified)) {
			emit(c.classified, prometheus.CounterValue, float64(s.Classified[result]), s.Name, result)
		}
		for _, outcome := range slices.Sorted(maps.Keys(s.FirstConnections)) {
			emit(c.first, prometheus.CounterValue, float64(s.FirstConnections[outcome]), s.Name, outcome)
		}
		emit(c.refused, prometheus.CounterValue, float64(s.Refused), s.Name)
		emit(c.migrations, prometheus.CounterValue, float64(s.Migrations), s.Name)
		emit(c.migrated, prometheus.CounterValue, float64(s.MigratedClients), s.Name)
		emit(c.migrationSeconds, prometheus.CounterValue, s.MigrationSeconds, s.Name)
		emit(c.pinsAdded, prometheus.CounterValue, float64(s.PinsAdded), s.Name)
		emit(c.pinsUnpinned, prometheus.CounterValue, float64(s.PinsUnpinned), s.Name)
		emit(c.pinsExpired, prometheus.CounterValue, float64(s.PinsExpired), s.Name)
		emit(c.pinsMigrated, prometheus.CounterValue, float64(s.MigratedClients), s.Name)
		for _, b := range s.Backends {
			emit(c.pins, prometheus.GaugeValue, float64(b.Pinned), s.Name, b.Name)
			if s.MaxClients > 0 {
				emit(c.fill, prometheus.GaugeValue, float64(b.Pinned)/float64(s.MaxClients), s.Name, b.Name)
			}
			emit(c.backendUp, prometheus.GaugeValue, bit(b.Health == "up"), s.Name, b.Name)
			emit(c.draining, prometheus.GaugeValue, bit(b.Draining), s.Name, b.Name)
			emit(c.active, prometheus.GaugeValue, float64(b.Active), s.Name, b.Name)
			emit(c.proxiedConns, prometheus.CounterValue, float64(b.Connections), s.Name, b.Name)
			emit(c.proxiedBytes, prometheus.CounterValue, float64(b.BytesIn), s.Name, b.Name, "in")
			emit(c.proxiedBytes, prometheus.CounterValue, float64(b.BytesOut), s.Name, b.Name, "out")
			emit(c.fwdPackets, prometheus.CounterValue, float64(b.Packets), s.Name, b.Name)
			emit(c.fwdBytes, prometheus.CounterValue, float64(b.ForwardBytes), s.Name, b.Name)
			emit(c.checks, prometheus.CounterValue, float64(b.HealthChecks), s.Name, b.Name)
			emit(c.checkFailures, prometheus.CounterValue, float64(b.HealthFailedChecks), s.Name, b.Name)
			emit(c.checkSeconds, prometheus.GaugeValue, b.HealthLatency, s.Name, b.Name)
		}
	}
}

// prunePinTime drops the histogram series of services not in svcs. It reads
// the series' service labels from the histogram itself, at scrape time, so
// that the accept path (ObservePin) pays nothing for it.
func (c *statusCollector) prunePinTime(svcs []balancer.ServiceStatus) {
	ch := make(chan prometheus.Metric)
	go func() {
		c.pinTime.Collect(ch)
		close(ch)
	}()
	var gone []string
	for m := range ch {
		var pb dto.Metric
		if m.Write(&pb) != nil {
			continue
		}
		for _, l := range pb.GetLabel() {
			name := l.GetValue()
			if l.GetName() == "service" && !slices.ContainsFunc(svcs, func(s balancer.ServiceStatus) bool { return s.Name == name }) {
				gone = append(gone, name)
			}
		}
	}
	for _, name := range gone {
		c.pinTime.DeleteLabelValues(name)
	}
}

// unixSeconds is t as Unix time in seconds; 0 for the zero time.
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

var _ prometheus.Collector = (*statusCollector)(nil)
