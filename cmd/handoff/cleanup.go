package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/kernel"
)

func newCleanupCmd() *cobra.Command {
	var force, prefixed bool
	cmd := &cobra.Command{
		Use:   "cleanup [--force] [--prefixed]",
		Short: "Remove every chain, rule, set and routing rule handoff owns (idempotent)",
		Long: `Remove every kernel object handoff owns in this network namespace: the jumps
into its chains, its chains, its ipsets, and the policy routing of transparent
dials. Objects that only carry handoff's name prefixes and are not in its
registry (another program's, or an older handoff's) are left alone and listed;
--prefixed removes them too. Cleanup refuses while a handoff daemon runs here
(it would put everything back, and its clients lose their pins); --force
cleans up anyway.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o := kernel.Options{Logger: newLogger(config.LogInfo, config.LogText), CleanupPrefixed: prefixed}
			if pid := kernel.Owner(o); pid > 0 && !force {
				return exitError{code: 1, msg: fmt.Sprintf("handoff cleanup: a handoff daemon (PID %d) runs in this network namespace; stop it first, or pass --force", pid)}
			}
			if err := kernel.Cleanup(cmd.Context(), o); err != nil {
				return exitError{code: 1, msg: "handoff cleanup: " + err.Error()}
			}
			fmt.Fprintln(cmd.OutOrStdout(), "handoff cleanup: no handoff chains, rules, sets or routes remain")
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "clean up although a handoff daemon runs in this namespace")
	cmd.Flags().BoolVar(&prefixed, "prefixed", false, "also remove chains and sets that only carry handoff's name prefixes")
	return cmd
}
