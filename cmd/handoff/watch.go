package main

import (
	"context"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/sirupsen/logrus"
)

// reloadDebounce is how long the config file must stay quiet before a
// change reloads it: editors write a file in several steps.
const reloadDebounce = 300 * time.Millisecond

// watchConfig calls reload after the config file at path changes, until ctx
// ends. It watches the file's directory, not the file, so that a file
// replaced by rename (editors, `kubectl` ConfigMap symlink swaps) is still
// seen. Bursts of events are debounced into one reload.
func watchConfig(ctx context.Context, path string, log *logrus.Entry, reload func()) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		w.Close()
		return err
	}
	dir, base := filepath.Dir(abs), filepath.Base(abs)
	if err := w.Add(dir); err != nil {
		w.Close()
		return err
	}
	go func() {
		defer w.Close()
		var fire <-chan time.Time
		var timer *time.Timer
		for {
			select {
			case <-ctx.Done():
				if timer != nil {
					timer.Stop()
				}
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				name := filepath.Base(ev.Name)
				// ..data is the symlink Kubernetes swaps to update a mounted ConfigMap.
				if name != base && name != "..data" || ev.Op == fsnotify.Chmod {
					continue
				}
				if timer == nil {
					timer = time.NewTimer(reloadDebounce)
				} else {
					timer.Reset(reloadDebounce)
				}
				fire = timer.C
			case <-fire:
				fire = nil
				log.WithField("config", abs).Info("config file changed: reloading")
				reload()
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.WithError(err).Warn("watching the config file")
			}
		}
	}()
	return nil
}
