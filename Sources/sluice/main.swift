import SluiceCommands

// Every command is in SluiceCommands; `sluice-bench` shares them (Package.swift).
await Sluice.main()
