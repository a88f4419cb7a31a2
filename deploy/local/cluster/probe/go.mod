module aion.local/probe

go 1.24
