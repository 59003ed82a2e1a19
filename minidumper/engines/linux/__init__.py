"""The Linux engine: ptrace to pause, process_vm_readv to read, an ELF core to write."""
