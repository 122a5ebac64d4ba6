import QToolCommands

QTool.main()
