package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/sirupsen/logrus"
	"github.com/spf13/cobra"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/kernel"
)

func newDoctorCmd() *cobra.Command {
	var path string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor [-c FILE] [--json]",
		Short: "Check the host for kernel mode: forwarding, modules, conntrack size, rp_filter, iptables flavour; exit 1 on a fatal finding",
		Long: "Check what kernel mode needs of this host (in this network namespace) for the config: IPv4/IPv6 forwarding, the netfilter\n" +
			"modules, the conntrack table's size against the pin capacity, rp_filter, the iptables flavour and rules of the other flavour.\n" +
			"Each finding that is not ok comes with the command that fixes it. Exit 1 when a finding is fatal (kernel mode would refuse\n" +
			"to start, auto mode would run in userspace). handoff run makes the same checks at start in kernel and auto mode.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, cfg, err := loadConfig(path)
			if err != nil {
				return err
			}
			fs := kernel.Preflight(cmd.Context(), preflightOptions(cfg))
			if asJSON {
				if err := printJSON(cmd.OutOrStdout(), fs); err != nil {
					return err
				}
			} else {
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
				fmt.Fprintln(w, "CHECK\tSTATUS\tFINDING")
				for _, f := range fs {
					fmt.Fprintf(w, "%s\t%s\t%s\n", f.Check, f.Severity, f.Message)
					if f.Fix != "" {
						fmt.Fprintf(w, "\t\tfix: %s\n", f.Fix)
					}
				}
				w.Flush()
			}
			if err := kernel.Fatal(fs); err != nil {
				return exitError{code: 1, msg: "handoff: " + err.Error()}
			}
			return nil
		},
	}
	addConfigFlag(cmd, &path)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the findings as JSON")
	return cmd
}

// preflightOptions says what cfg needs of the kernel.
func preflightOptions(cfg *config.Config) kernel.PreflightOptions {
	o := kernel.PreflightOptions{IPv6: hasIPv6(cfg)}
	for _, s := range cfg.Services {
		if s.Classify == config.ClassifySource {
			o.HoldSYNs = true
		}
		if !s.SNAT && s.FirstConnection == config.FirstProxy {
			o.Transparent = true
		}
		for _, p := range s.Pools {
			o.PinCapacity += s.MaxClients * len(p.Backends)
		}
	}
	return o
}

// logFindings logs the findings of a preflight that are not ok, with
// their fixes.
func logFindings(log *logrus.Entry, fs []kernel.Finding) {
	for _, f := range fs {
		if f.Severity == kernel.SeverityOK {
			continue
		}
		e := log.WithField("check", f.Check)
		if f.Fix != "" {
			e = e.WithField("fix", f.Fix)
		}
		if f.Severity == kernel.SeverityFatal {
			e.Error(f.Message)
		} else {
			e.Warn(f.Message)
		}
	}
}
