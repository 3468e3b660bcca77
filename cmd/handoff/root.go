package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"

	"github.com/handoff-lb/handoff/config"
)

// version is set at build time with -ldflags "-X main.version=..."
// (scripts/release.sh does); otherwise it is the module version that go
// install recorded, or "dev".
var version = "dev"

// commit is the VCS revision when the build info has none (a container
// build without .git passes it with -ldflags "-X main.commit=...").
var commit string

func init() {
	if bi, ok := debug.ReadBuildInfo(); ok && version == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		version = bi.Main.Version
	}
}

// buildInfo is what handoff version prints.
type buildInfo struct {
	Version   string `json:"version"`
	Module    string `json:"module"`
	Commit    string `json:"commit"`   // VCS revision; "" when built outside a checkout
	Date      string `json:"date"`     // of the commit
	Modified  bool   `json:"modified"` // built from a tree with uncommitted changes
	GoVersion string `json:"go"`
	Platform  string `json:"platform"`
}

// readBuildInfo reads the binary's build information.
func readBuildInfo() buildInfo {
	b := buildInfo{Version: version, Commit: commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	b.Module = bi.Main.Path
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Commit = s.Value
		case "vcs.time":
			b.Date = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

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
	root.AddCommand(newRunCmd(), newValidateCmd(), newDoctorCmd(), newCleanupCmd(), newVersionCmd())
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
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version [--json]",
		Short: "Print the version, the module and its VCS revision",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b := readBuildInfo()
			if asJSON {
				return printJSON(cmd.OutOrStdout(), b)
			}
			commit := b.Commit
			if commit == "" {
				commit = "unknown"
			}
			if b.Modified {
				commit += " (modified)"
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "handoff %s\nmodule   %s\ncommit   %s\n", b.Version, b.Module, commit)
			if b.Date != "" {
				fmt.Fprintf(w, "date     %s\n", b.Date)
			}
			fmt.Fprintf(w, "go       %s %s\n", b.GoVersion, b.Platform)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, for scripts")
	return cmd
}
