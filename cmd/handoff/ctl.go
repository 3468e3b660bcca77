package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/handoff-lb/handoff/admin"
	"github.com/handoff-lb/handoff/balancer"
	"github.com/handoff-lb/handoff/cluster"
	"github.com/handoff-lb/handoff/config"
)

// The commands that talk to a running daemon through its admin API
// (DESIGN.md §3 and §6): status, clients, pin, unpin, drain. Each prints
// aligned text for people, or JSON with --json; an unreachable daemon or a
// refusal of the API is exit 1 with one line.

// apiFlags are the flags every API command has.
type apiFlags struct {
	config    string
	admin     string
	tokenFile string
	json      bool
}

func addAPIFlags(cmd *cobra.Command, f *apiFlags) {
	addConfigFlag(cmd, &f.config)
	cmd.Flags().StringVar(&f.admin, "admin", "", "admin API, host:port, URL or unix:PATH (default: the config's admin.listen, then unix:"+config.DefaultAdminSocket+" when it exists, then http://"+config.DefaultAdminListen+")")
	cmd.Flags().StringVar(&f.tokenFile, "token-file", "", "file holding the API's bearer token (default: the config's admin.token_file)")
	cmd.Flags().BoolVar(&f.json, "json", false, "print JSON, for scripts")
}

// client returns the API client: --admin and --token-file, else the
// config's admin.listen and admin.token_file, else the default address
// without a token. The config is read only when a flag is missing; a
// missing or unreadable default config file is no error, but a file named
// by -c or $HANDOFF_CONFIG must load.
func (f *apiFlags) client(cmd *cobra.Command) (*admin.Client, error) {
	addr, tokenFile, tokenFrom := f.admin, f.tokenFile, "--token-file"
	fl := cmd.Flags()
	if !fl.Changed("admin") || !fl.Changed("token-file") {
		a, err := configAdmin(f.config)
		if err != nil {
			return nil, err
		}
		if !fl.Changed("admin") {
			addr = a.Listen
		}
		if !fl.Changed("token-file") {
			tokenFile, tokenFrom = a.TokenFile, "the config's admin.token_file"
		}
	}
	if addr == "" {
		addr = defaultAdmin()
	}
	token := ""
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return nil, fmt.Errorf("reading the admin token (%s): %w", tokenFrom, err)
		}
		token = strings.TrimSpace(string(b))
	}
	return admin.NewClient(addr, token), nil
}

// defaultSocket is the admin socket the CLI looks for (a variable for tests).
var defaultSocket = config.DefaultAdminSocket

// defaultAdmin is the API's address when no flag or config names one: the
// default socket when it exists, else the default TCP address.
func defaultAdmin() string {
	if fi, err := os.Stat(defaultSocket); err == nil && fi.Mode().Type() == os.ModeSocket {
		return config.AdminUnixPrefix + defaultSocket
	}
	return config.DefaultAdminListen
}

// configAdmin reads the admin section of the config that -c, then
// $HANDOFF_CONFIG, then the default path names.
func configAdmin(flag string) (config.Admin, error) {
	path := configPath(flag)
	cfg, err := config.Load(path)
	if err == nil {
		return cfg.Admin, nil
	}
	named := flag != "" || os.Getenv("HANDOFF_CONFIG") != ""
	if !named && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission)) {
		return config.Admin{}, nil
	}
	return config.Admin{}, fmt.Errorf("finding the admin API in %s (or give --admin and --token-file): %w", path, err)
}

// withAuthHint runs a command and says where the token comes from when the
// API refused it for want of one.
func withAuthHint(run func(*cobra.Command, []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := run(cmd, args)
		var ae *admin.APIError
		if errors.As(err, &ae) && ae.Status == http.StatusUnauthorized {
			return fmt.Errorf("%w (the token is read from --token-file, by default the config's admin.token_file)", err)
		}
		return err
	}
}

// serviceFlag adds the required --service.
func serviceFlag(cmd *cobra.Command, service *string) {
	cmd.Flags().StringVar(service, "service", "", "the service (required)")
	_ = cmd.MarkFlagRequired("service")
}

// wantArgs checks the positional arguments by name.
func wantArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			got := strconv.Itoa(len(args)) + " arguments"
			if len(args) == 1 {
				got = "1 argument"
			}
			return fmt.Errorf("%s: want %s, got %s (see %s --help)", cmd.Name(), strings.Join(names, " "), got, cmd.CommandPath())
		}
		return nil
	}
}

// parseClientIP validates a CLIENT_IP argument as the API wants it.
func parseClientIP(s string) (string, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return "", fmt.Errorf("CLIENT_IP %q: not an IPv4 or IPv6 address", s)
	}
	return a.Unmap().String(), nil
}

func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func newStatusCmd() *cobra.Command {
	var f apiFlags
	cmd := &cobra.Command{
		Use:   "status [--admin URL]",
		Short: "Show services, backends, health, pinned clients and live connections",
		Args:  cobra.NoArgs,
		RunE: withAuthHint(func(cmd *cobra.Command, _ []string) error {
			c, err := f.client(cmd)
			if err != nil {
				return err
			}
			st, err := c.Status(cmd.Context())
			if err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), st)
			}
			return printStatus(cmd.OutOrStdout(), st)
		}),
	}
	addAPIFlags(cmd, &f)
	return cmd
}

// printStatus writes the daemon's state as aligned tables.
func printStatus(out io.Writer, st balancer.Status) error {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "mode\t%s\n", st.Mode)
	if st.State != "" { // a daemon older than the field does not send it
		fmt.Fprintf(w, "state\t%s\n", st.State)
	}
	fmt.Fprintf(w, "version\t%s\nuptime\t%s\n", st.Version, admin.FormatSeconds(st.Uptime))
	if c := st.Conntrack; c != nil {
		fmt.Fprintf(w, "conntrack\t%d of %d (%.0f%%)\n", c.Entries, c.Max, 100*c.Fill)
	}
	if st.InconclusiveChecks > 0 {
		fmt.Fprintf(w, "inconclusive checks\t%d (this host could not connect: not counted against backends)\n", st.InconclusiveChecks)
	}
	if len(st.Services) == 0 {
		fmt.Fprintln(w, "\nno services")
		return w.Flush()
	}
	fmt.Fprintln(w, "\nSERVICE\tLISTEN\tOPEN\tPINNED\tACTIVE\tREFUSED")
	for _, s := range st.Services {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%d\n", s.Name, s.Listen, yesNo(s.Open), s.Pinned, s.Active, s.Refused)
	}
	fmt.Fprintln(w, "\nFIRST CONNECTIONS\tIN-KERNEL\tTRANSPARENT\tPROXIED\tRESET")
	for _, s := range st.Services {
		f := s.FirstConnections
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\n", s.Name, f["in-kernel"], f["transparent"], f["proxied"], f["reset"])
	}
	if refusedPins(st) {
		fmt.Fprintln(w, "\nNOT PINNED\tSET FULL\tOVER BUDGET\tON FULL")
		for _, s := range st.Services {
			fmt.Fprintf(w, "%s\t%d\t%d\t%s\n", s.Name, s.Classified[balancer.ResultFull], s.Classified[balancer.ResultOverBudget], s.OnFull)
		}
	}
	fmt.Fprintln(w, "\nSERVICE\tBACKEND\tADDRESS\tPOOL\tHEALTH\tDRAINING\tPINNED\tACTIVE\tBYTES")
	for _, s := range st.Services {
		for _, b := range s.Backends {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", s.Name, b.Name, b.Address, b.Pool, b.Health,
				yesNo(b.Draining), b.Pinned, b.Active, admin.FormatBytes(b.BytesIn+b.BytesOut+b.ForwardBytes))
		}
	}
	return w.Flush()
}

// refusedPins reports whether any service had new clients whose pin found
// no room (a full set, a spent pin budget).
func refusedPins(st balancer.Status) bool {
	for _, s := range st.Services {
		if s.Classified[balancer.ResultFull]+s.Classified[balancer.ResultOverBudget] > 0 {
			return true
		}
	}
	return false
}

func newClientsCmd() *cobra.Command {
	var (
		f                apiFlags
		service, backend string
		limit            int
	)
	cmd := &cobra.Command{
		Use:   "clients [--admin URL] --service S [--backend B] [--limit N]",
		Short: "List a service's pinned clients, streamed as the daemon walks them",
		Args:  cobra.NoArgs,
		RunE: withAuthHint(func(cmd *cobra.Command, _ []string) error {
			if limit < 0 {
				return fmt.Errorf("--limit %d: want 0 (all) or more", limit)
			}
			c, err := f.client(cmd)
			if err != nil {
				return err
			}
			out := bufio.NewWriter(cmd.OutOrStdout())
			defer out.Flush()
			if f.json {
				return clientsJSON(cmd, c, out, service, backend, limit)
			}
			t := &streamTable{w: out}
			t.row("CLIENT", "BACKEND", "KEY", "EXPIRES")
			n := 0
			err = c.Clients(cmd.Context(), service, backend, limit, func(p balancer.ClientPin) error {
				n++
				key, expires := p.Key, "never"
				if key == "" {
					key = "-"
				}
				if p.ExpiresIn > 0 {
					expires = admin.FormatSeconds(p.ExpiresIn)
				}
				return t.row(p.Client, p.Backend, key, expires)
			})
			if err != nil {
				if n > 0 {
					t.flush()
				}
				return err
			}
			if n == 0 {
				where := service
				if backend != "" {
					where = backend + " of " + service
				}
				_, err := fmt.Fprintf(out, "no clients are pinned to %s\n", where)
				return err
			}
			return t.flush()
		}),
	}
	addAPIFlags(cmd, &f)
	serviceFlag(cmd, &service)
	cmd.Flags().StringVar(&backend, "backend", "", "only the clients of this backend")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most N clients (0: all)")
	return cmd
}

// clientsJSON writes the pins as one JSON array, a pin a line, as they
// arrive.
func clientsJSON(cmd *cobra.Command, c *admin.Client, out *bufio.Writer, service, backend string, limit int) error {
	sep := "[\n"
	err := c.Clients(cmd.Context(), service, backend, limit, func(p balancer.ClientPin) error {
		out.WriteString(sep)
		sep = ",\n"
		b, err := json.Marshal(p)
		if err != nil {
			return err
		}
		_, err = out.Write(b)
		return err
	})
	if err != nil {
		return err
	}
	end := "\n]\n"
	if sep == "[\n" {
		end = "[]\n"
	}
	_, err = out.WriteString(end)
	return err
}

// streamTable aligns rows without holding them all: the first
// streamTableHead rows set the column widths, and later rows are padded to
// them (a longer cell widens its column from there on).
type streamTable struct {
	w      io.Writer
	head   [][]string
	widths []int
	err    error
}

const streamTableHead = 1000

func (t *streamTable) row(cells ...string) error {
	if t.widths == nil {
		t.head = append(t.head, cells)
		if len(t.head) < streamTableHead {
			return nil
		}
		return t.flush()
	}
	t.write(cells)
	return t.err
}

// flush sets the widths from the rows held and writes them.
func (t *streamTable) flush() error {
	if t.widths == nil {
		t.widths = []int{}
	}
	for _, r := range t.head {
		for i, c := range r {
			if i == len(t.widths) {
				t.widths = append(t.widths, 0)
			}
			t.widths[i] = max(t.widths[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range t.head {
		t.write(r)
	}
	t.head = nil
	return t.err
}

func (t *streamTable) write(cells []string) {
	if t.err != nil {
		return
	}
	var b strings.Builder
	for i, c := range cells {
		if i == len(cells)-1 {
			b.WriteString(c)
			break
		}
		if i < len(t.widths) {
			t.widths[i] = max(t.widths[i], utf8.RuneCountInString(c))
		}
		b.WriteString(c)
		b.WriteString(strings.Repeat(" ", t.widths[i]-utf8.RuneCountInString(c)+2))
	}
	b.WriteByte('\n')
	_, t.err = io.WriteString(t.w, b.String())
}

func newPinCmd() *cobra.Command {
	var (
		f       apiFlags
		service string
	)
	cmd := &cobra.Command{
		Use:   "pin [--admin URL] --service S CLIENT_IP BACKEND",
		Short: "Pin a client to a backend by hand, replacing its pin",
		Args:  wantArgs("CLIENT_IP", "BACKEND"),
		RunE: withAuthHint(func(cmd *cobra.Command, args []string) error {
			client, err := parseClientIP(args[0])
			if err != nil {
				return err
			}
			c, err := f.client(cmd)
			if err != nil {
				return err
			}
			if err := c.Pin(cmd.Context(), service, client, args[1]); err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"service": service, "client": client, "backend": args[1]})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "pinned %s to %s in %s\n", client, args[1], service)
			return err
		}),
	}
	addAPIFlags(cmd, &f)
	serviceFlag(cmd, &service)
	return cmd
}

func newUnpinCmd() *cobra.Command {
	var (
		f       apiFlags
		service string
	)
	cmd := &cobra.Command{
		Use:   "unpin [--admin URL] --service S CLIENT_IP",
		Short: "Remove a client's pin; its next connection is classified afresh",
		Args:  wantArgs("CLIENT_IP"),
		RunE: withAuthHint(func(cmd *cobra.Command, args []string) error {
			client, err := parseClientIP(args[0])
			if err != nil {
				return err
			}
			c, err := f.client(cmd)
			if err != nil {
				return err
			}
			if err := c.Unpin(cmd.Context(), service, client); err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"service": service, "client": client})
			}
			_, err = fmt.Fprintf(cmd.OutOrStdout(), "unpinned %s in %s\n", client, service)
			return err
		}),
	}
	addAPIFlags(cmd, &f)
	serviceFlag(cmd, &service)
	return cmd
}

func newDrainCmd() *cobra.Command {
	var (
		f             apiFlags
		service       string
		migrate, undo bool
	)
	cmd := &cobra.Command{
		Use:   "drain [--admin URL] --service S BACKEND [--migrate | --undo]",
		Short: "Send a backend no new clients (--migrate: move its pins now; --undo: end the drain)",
		Args:  wantArgs("BACKEND"),
		RunE: withAuthHint(func(cmd *cobra.Command, args []string) error {
			if migrate && undo {
				return errors.New("--migrate and --undo exclude each other")
			}
			op, opName := balancer.DrainStart, "start"
			switch {
			case migrate:
				op, opName = balancer.DrainMigrate, "migrate"
			case undo:
				op, opName = balancer.DrainUndo, "undo"
			}
			c, err := f.client(cmd)
			if err != nil {
				return err
			}
			be := args[0]
			moved, err := c.Drain(cmd.Context(), service, be, op)
			if err != nil {
				if moved > 0 {
					return fmt.Errorf("%w (%s had moved)", err, clientCount(moved))
				}
				return err
			}
			out := cmd.OutOrStdout()
			if f.json {
				return printJSON(out, struct {
					Service string `json:"service"`
					Backend string `json:"backend"`
					Op      string `json:"op"`
					Moved   int    `json:"moved"`
				}{service, be, opName, moved})
			}
			switch op {
			case balancer.DrainMigrate:
				_, err = fmt.Fprintf(out, "draining %s in %s: moved %s; no new clients\n", be, service, clientCount(moved))
			case balancer.DrainUndo:
				_, err = fmt.Fprintf(out, "%s in %s takes new clients again\n", be, service)
			default:
				_, err = fmt.Fprintf(out, "draining %s in %s: no new clients; its pins stay until they expire\n", be, service)
			}
			return err
		}),
	}
	addAPIFlags(cmd, &f)
	serviceFlag(cmd, &service)
	cmd.Flags().BoolVar(&migrate, "migrate", false, "also move the backend's pinned clients now, the rehash way")
	cmd.Flags().BoolVar(&undo, "undo", false, "end the drain: the backend takes new clients again")
	return cmd
}

// clientCount is "1 client", "2 clients".
func clientCount(n int) string {
	if n == 1 {
		return "1 client"
	}
	return strconv.Itoa(n) + " clients"
}

func newClusterCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cluster",
		Short: "Inspect the cluster this daemon belongs to",
		Args:  cobra.NoArgs,
	}
	var f apiFlags
	status := &cobra.Command{
		Use:   "status [--admin URL] [--json]",
		Short: "Show the cluster's hosts, their pins, how far each is behind etcd, and etcd's health",
		Args:  cobra.NoArgs,
		RunE: withAuthHint(func(cmd *cobra.Command, _ []string) error {
			c, err := f.client(cmd)
			if err != nil {
				return err
			}
			st, err := c.Cluster(cmd.Context())
			if err != nil {
				return err
			}
			if f.json {
				return printJSON(cmd.OutOrStdout(), st)
			}
			return printCluster(cmd.OutOrStdout(), st, time.Now())
		}),
	}
	addAPIFlags(status, &f)
	cmd.AddCommand(status)
	return cmd
}

// printCluster writes the cluster's state as aligned tables.
func printCluster(out io.Writer, st cluster.Status, now time.Time) error {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "cluster\t%s\nnode\t%s\n", st.Name, st.Node)
	etcd := "reachable"
	if !st.Etcd.Reachable {
		etcd = "UNREACHABLE: serving from local state, writes queued"
		if st.Etcd.Error != "" {
			etcd += " (" + st.Etcd.Error + ")"
		}
	}
	fmt.Fprintf(w, "etcd\t%s, %s\n", etcd, strings.Join(st.Endpoints, ","))
	fmt.Fprintf(w, "revision\t%d applied of %d\n", st.AppliedRevision, st.Etcd.Revision)
	fmt.Fprintf(w, "pending writes\t%d\n", st.Pending)
	fmt.Fprintf(w, "pins\t%d published, %d removed, %d refreshed; %d applied, %d unpinned from other hosts\n",
		st.Published, st.Removed, st.Refreshed, st.Applied, st.Unpinned)
	fmt.Fprintf(w, "apply lag\tp50 ≤ %gms, p99 ≤ %gms (%d pins)\n", st.Lag.P50*1000, st.Lag.P99*1000, st.Lag.Count)
	fmt.Fprintln(w, "\nNODE\tVERSION\tPINS\tPENDING\tBEHIND\tLAG P99\tREPORTED")
	for _, n := range st.Nodes {
		name := n.Node
		if n.Self {
			name += " *"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%gms\t%s ago\n", name, n.Version, n.Pins, n.Pending, n.Behind, n.LagP99*1000,
			admin.FormatSeconds(max(now.Sub(n.Updated), 0).Seconds()))
	}
	return w.Flush()
}
