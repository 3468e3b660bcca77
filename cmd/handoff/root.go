package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/handoff-lb/handoff/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitError ends the process with code after printing msg (if any) to stderr.
type exitError struct {
	code int
	msg  string
}

func (e exitError) Error() string { return e.msg }

func asExit(err error, target *exitError) bool { return errors.As(err, target) }

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "handoff",
		Short:         "Kernel-offload hybrid TCP load balancer",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newRunCmd(), newValidateCmd(), newCleanupCmd(), newVersionCmd())
	root.AddCommand(newStatusCmd(), newClientsCmd(), newPinCmd(), newUnpinCmd(), newDrainCmd(), newClusterCmd())
	return root
}

// addConfigFlag adds -c/--config, resolved later by configPath.
func addConfigFlag(cmd *cobra.Command, path *string) {
	cmd.Flags().StringVarP(path, "config", "c", "", "config file (default $HANDOFF_CONFIG, then /etc/handoff/handoff.yaml)")
}

// configPath resolves -c: the flag, then $HANDOFF_CONFIG, then the default.
func configPath(flag string) string {
	if flag != "" {
		return flag
	}
	if p := os.Getenv("HANDOFF_CONFIG"); p != "" {
		return p
	}
	return "/etc/handoff/handoff.yaml"
}

// loadConfig loads the config named by the -c flag (see configPath); an
// invalid or unreadable file is exit 1 listing every error.
func loadConfig(flag string) (path string, cfg *config.Config, err error) {
	path = configPath(flag)
	cfg, err = config.Load(path)
	if err != nil {
		return path, nil, exitError{code: 1, msg: err.Error()}
	}
	return path, cfg, nil
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintln(cmd.OutOrStdout(), "handoff", version)
			return nil
		},
	}
}
