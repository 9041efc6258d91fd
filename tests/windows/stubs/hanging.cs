// Stub SecureStorageBackup.exe that waits for a desktop that never comes: it starts a copy of itself (so only
// a whole-tree kill stops everything), never reads its input and sleeps. C# 5 (Add-Type on Windows PowerShell 5.1).
using System;
using System.Diagnostics;
using System.Reflection;
using System.Threading;

public static class KeyfleetHangingStub
{
    public static int Main(string[] args)
    {
        if (args.Length == 0 || args[0] != "child")
        {
            ProcessStartInfo child = new ProcessStartInfo(Assembly.GetEntryAssembly().Location, "child");
            child.UseShellExecute = false;
            Process.Start(child);
            Console.WriteLine("Encryption Key Backup or Restore Wizard: waiting for the desktop session.");
        }
        Thread.Sleep(Timeout.Infinite);
        return 0;
    }
}
