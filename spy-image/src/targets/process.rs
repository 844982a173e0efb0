//! /proc: process names, namespaces, mapped files.
