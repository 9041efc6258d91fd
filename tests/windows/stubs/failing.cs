// Stub SecureStorageBackup.exe that fails at once: a message on stderr, exit code 2, the password never read.
// C# 5 (Add-Type on Windows PowerShell 5.1).
using System;

public static class KeyfleetFailingStub
{
    public static int Main(string[] args)
    {
        Console.Error.WriteLine("KEYFLEET-STUB-FAILURE: the encryption key could not be read (access denied).");
        return 2;
    }
}
