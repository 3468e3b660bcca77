package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/handoff-lb/handoff/config"
	"github.com/handoff-lb/handoff/kernel"
)

func newCleanupCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "cleanup",
		Short: "Remove every chain, rule and set handoff owns (idempotent)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := kernel.Cleanup(cmd.Context(), kernel.Options{Logger: newLogger(config.LogInfo, config.LogText)}); err != nil {
				return exitError{code: 1, msg: "handoff cleanup: " + err.Error()}
			}
			fmt.Fprintln(cmd.OutOrStdout(), "handoff cleanup: no handoff chains, rules or sets remain")
			return nil
		},
	}
}
